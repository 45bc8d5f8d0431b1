"""What every HTTP surface of the app shares: the API, the Gradio guard, the server's handlers.

One JSON answer for our user-facing errors (the OpenAI error shape: `{"error": {"message",
"type", "code", "param"}}`, with `Retry-After` / `x-ratelimit-*` on 429s, `WWW-Authenticate`
on 401s and `Allow` on 405s), and the request's declared length. It lives below `api` and
`ui` so that neither imports the other: the guard in front of Gradio answers its refusals
in the same shape as the API.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse
from starlette.types import Scope

from core.errors import (
    BudgetExceeded,
    MethodNotAllowed,
    NotAuthenticated,
    RateLimited,
    TenantLLMError,
)


def error_body(err: TenantLLMError, param: str | None = None) -> dict[str, Any]:
    """The OpenAI error body for a user-facing error."""
    return {
        "error": {"message": err.message, "type": err.error_type, "code": err.code, "param": param}
    }


def error_response(err: TenantLLMError, param: str | None = None) -> JSONResponse:
    """A JSON error answer with the error's status and the headers clients rely on."""
    headers: dict[str, str] = {}
    if isinstance(err, RateLimited):
        headers = {
            "Retry-After": str(err.retry_after),
            "x-ratelimit-limit-requests": err.limit or "unknown",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": f"{err.retry_after}s",
        }
    elif isinstance(err, BudgetExceeded):
        # x-should-retry: the OpenAI SDKs would otherwise retry a 429 that lasts till the reset.
        headers = {
            "Retry-After": str(err.retry_after),
            "x-should-retry": "false",
            "x-tenantllm-budget-remaining-tokens": str(err.remaining),
        }
    elif isinstance(err, NotAuthenticated):
        headers = {"WWW-Authenticate": "Bearer"}
    elif isinstance(err, MethodNotAllowed):
        headers = {"Allow": ", ".join(err.allowed)}
    return JSONResponse(error_body(err, param), status_code=err.status, headers=headers)


def declared_length(scope: Scope) -> int | None:
    """The request's Content-Length, or None when absent or malformed."""
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed length before we get here
    return None
