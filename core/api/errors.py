"""Errors of the OpenAI-compatible API, in the OpenAI shape, with the right status and headers.

`OpenAIRoute` is the router's route class: it turns request validation errors (a 400 that
names the parameter) and `TenantLLMError`s into `{"error": {"message", "type", "code",
"param"}}` answers, adds `Retry-After` / `x-ratelimit-*` to 429s, and answers anything
unexpected with a generic 500 (logged with its traceback) so the app keeps serving. Doing it in
the route class keeps the API's error shape independent of the app's global handlers.

`core.web.error_body` is the one place that body is built. Every /v1 error goes through it:
the route class, the `/v1` fallback (unknown path 404, wrong method 405), `core.api.body`'s 413, a
refused or missing bearer credential (raised in the route's dependency), `RateLimited` (the
route class, or core/server.py's app-wide handler), and an error in the middle of a stream
(core/api/stream.py). Two refusals happen before any route and answer plain text on every
path: a wrong Host (Starlette's TrustedHostMiddleware) and a cross-origin state change
(core/auth/cross_site.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.routing import Match

from core.audit.auditor import AuditEvent
from core.errors import (
    InvalidRequest,
    MethodNotAllowed,
    NotAuthenticated,
    NotFound,
    PermissionDenied,
    RequestTooLarge,
    TenantLLMError,
    TenantNotFound,
)
from core.web import error_body, error_response

log = logging.getLogger(__name__)


class InternalError(TenantLLMError):
    """An unexpected failure: logged with its traceback, answered without any detail."""

    status = 500
    code = "internal_error"
    error_type = "server_error"


#: The body of every unexpected failure (a route's, or a stream's after its status line).
INTERNAL_ERROR = error_body(InternalError("Internal error; it has been logged."))


def http_error_response(exc: HTTPException) -> JSONResponse:
    """A Starlette/FastAPI HTTP error (raised before our code runs) in the OpenAI shape."""
    err: TenantLLMError
    if exc.status_code == 400:
        err = InvalidRequest("The request body must be valid JSON (see /docs).")
    elif exc.status_code == 404:
        err = NotFound("Unknown API path (see /docs for the API).")
    elif exc.status_code == 413:
        err = RequestTooLarge(str(exc.detail))
    else:
        err = TenantLLMError(str(exc.detail))
        err.status = exc.status_code
        err.error_type = "server_error" if exc.status_code >= 500 else "invalid_request_error"
    return error_response(err)


def describe_validation_error(exc: RequestValidationError) -> tuple[str, str | None]:
    """One readable sentence for the first problem, and the parameter it is about."""
    errors = list(exc.errors())
    if not errors:
        return "The request is invalid.", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    # Unions add the branch name ("str", "list[...]") to the location: not a parameter.
    param = ".".join(p for p in loc if not p.startswith(("str", "list[", "function-")))
    kind = first.get("type", "")
    if kind == "extra_forbidden":
        return f"Unsupported parameter: '{param}' is not supported by tenantllm.", param
    if kind in ("json_invalid", "model_attributes_type") or not param:
        return "The request body must be a JSON object (see /docs).", None
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"Invalid value for '{param}': {message}", param


#: Refusals of access (audited `denied`); any other refusal is the caller's error.
_DENIALS = (NotAuthenticated, PermissionDenied, TenantNotFound)


def audit_refusal(request: Request, err: TenantLLMError, tenant_id: str | None = None) -> None:
    """Audit a call refused before the chat turn could (no credential, invalid body, a model
    the principal may not use or that does not exist)."""
    services = getattr(request.app.state, "services", None)
    if services is None:
        return
    principal = getattr(request.state, "principal", None)
    path = request.url.path
    services.auditor.record(
        AuditEvent.from_request(
            request,
            action="api_chat" if path.endswith("/chat/completions") else "api_models",
            outcome="denied" if isinstance(err, _DENIALS) else "error",
            principal=principal,
            tenant_id=tenant_id,
            status=err.status,
            error_class=type(err).__name__,
            detail=err.message[:500],
        )
    )


class OpenAIRoute(APIRoute):
    """A route whose failures are answered in the OpenAI error shape.

    Invalid bodies are audited here; a refused bearer credential is audited by core.auth.bearer,
    a missing one by `current_principal`, the chat turn audits its own refusals and outcomes.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """Wrap FastAPI's handler so every failure becomes an OpenAI-shaped answer."""
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                message, param = describe_validation_error(exc)
                err = InvalidRequest(message)
                audit_refusal(request, err)
                return error_response(err, param)
            except TenantLLMError as exc:  # already audited (bearer check or chat turn)
                return error_response(exc)
            except HTTPException as exc:  # e.g. FastAPI's "error parsing the body"
                return http_error_response(exc)
            except Exception:
                log.exception("unexpected error in %s %s", request.method, request.url.path)
                return JSONResponse(INTERNAL_ERROR, status_code=InternalError.status)

        return route


# --- unknown paths and wrong methods under /v1 -------------------------------------------
_ANY_METHOD = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
_SHOWN_PATH_CHARS = 200

fallback_router = APIRouter(prefix="/v1", route_class=OpenAIRoute, include_in_schema=False)


def _methods_at(request: Request) -> list[str]:
    """The methods the API's real routes accept at this request's path (none: unknown)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, APIRoute) and route.endpoint is not unknown_api_path:
            match, _ = route.matches(request.scope)
            if match is Match.PARTIAL:
                methods |= route.methods
    return sorted(methods)


@fallback_router.api_route("/{path:path}", methods=_ANY_METHOD)
async def unknown_api_path(request: Request, path: str) -> Response:
    """Anything under /v1 that no API route takes: 405 (known path) or 404, OpenAI-shaped.

    Without it the request would fall through to the Gradio app mounted at `/`, which answers
    `{"detail": "Not Found"}`, a shape OpenAI clients cannot read.
    """
    shown = f"{request.method} {request.url.path[:_SHOWN_PATH_CHARS]}"
    allowed = _methods_at(request)
    if allowed:
        raise MethodNotAllowed(f"{shown}: use {', '.join(allowed)} here.", allowed)
    raise NotFound(f"Unknown API path: {shown} (see /docs for the API).")
