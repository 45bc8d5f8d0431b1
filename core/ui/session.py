"""Who is calling, may they, and how failures reach the person: shared by every UI handler.

Every Gradio event is callable over HTTP by any signed-in session (STACK_NOTES 1.4), so no
handler trusts what the page sends: the principal is re-read from the signed session cookie of
the request on every call, the tenant a dropdown sends is re-checked with `authorize`, and a
refusal is audited before the person sees it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import gradio as gr

from core.audit.auditor import AuditEvent
from core.errors import NotAuthenticated, PermissionDenied, RateLimited, TenantLLMError
from core.identity import Principal
from core.rbac import Action, authorize
from core.services import Services

log = logging.getLogger(__name__)

GENERIC_ERROR = "Something went wrong on our side. It has been logged; please try again."


def principal_of(request: gr.Request | None) -> Principal:
    """The signed-in principal of this request (never a value the page sent)."""
    from core.auth.principal import principal_from_request

    raw = getattr(request, "request", None) if request is not None else None
    principal = principal_from_request(raw) if raw is not None else None
    if principal is None:
        raise NotAuthenticated("Your session has ended. Reload the page to sign in again.")
    return principal


def client_of(request: gr.Request | None) -> tuple[str | None, str | None]:
    """Client IP and user agent of the request, for the audit log."""
    raw = getattr(request, "request", None) if request is not None else None
    if raw is None:
        return None, None
    client = getattr(raw, "client", None)
    return (getattr(client, "host", None), raw.headers.get("user-agent"))


def check(
    services: Services,
    principal: Principal,
    tenant_id: str | None,
    action: Action,
    request: gr.Request | None,
) -> None:
    """`authorize`, and audit the refusal (outcome `denied`) before raising it."""
    try:
        authorize(principal, tenant_id, action)
    except PermissionDenied as exc:
        ip, agent = client_of(request)
        services.auditor.record(
            AuditEvent(
                action=f"ui_{action}",
                outcome="denied",
                user_sub=principal.subject,
                user_email=principal.email,
                tenant_id=tenant_id,
                status=exc.status,
                client_ip=ip,
                user_agent=agent,
                error_class=type(exc).__name__,
                detail=exc.message[:500],
            )
        )
        raise


def may(principal: Principal, tenant_id: str | None, action: Action) -> bool:
    """Whether the principal may do this (for showing or hiding controls; not audited)."""
    try:
        authorize(principal, tenant_id, action)
    except PermissionDenied:
        return False
    return True


def record_ok(
    services: Services,
    principal: Principal,
    action: str,
    tenant_id: str | None,
    request: gr.Request | None,
    detail: str | None = None,
    started: float | None = None,
) -> None:
    """Audit a successful UI action (documents changed, audit log viewed, keys managed)."""
    ip, agent = client_of(request)
    services.auditor.record(
        AuditEvent(
            action=action,
            outcome="ok",
            user_sub=principal.subject,
            user_email=principal.email,
            tenant_id=tenant_id,
            latency_ms=(time.monotonic() - started) * 1000.0 if started else 0.0,
            client_ip=ip,
            user_agent=agent,
            detail=detail,
        )
    )


def user_message(exc: BaseException) -> str:
    """What the person reads for this failure: ours verbatim, anything else generic."""
    if isinstance(exc, RateLimited):
        return f"{exc.message} Try again in {exc.retry_after} seconds."
    if isinstance(exc, TenantLLMError):
        return exc.message
    return GENERIC_ERROR


@contextmanager
def shown_as_error() -> Iterator[None]:
    """Turn a failure into a readable `gr.Error` (no traceback reaches the page)."""
    try:
        yield
    except gr.Error:
        raise
    except TenantLLMError as exc:
        raise gr.Error(user_message(exc), title=_title(exc), print_exception=False) from None
    except Exception as exc:
        log.exception("UI handler failed")
        raise gr.Error(GENERIC_ERROR, print_exception=False) from exc


def _title(exc: TenantLLMError) -> str:
    if isinstance(exc, RateLimited):
        return "Slow down"
    if isinstance(exc, PermissionDenied | NotAuthenticated):
        return "Not allowed"
    return "Error"


def team_choices(services: Services, principal: Principal) -> list[tuple[str, str]]:
    """(display name, id) of the teams this principal may chat with, in registry order."""
    allowed = set(principal.tenants())
    return [(t.display_name, t.id) for t in services.tenants.all() if t.id in allowed]


def first_or_none(values: list[Any]) -> Any:
    """The first element, or None for an empty list."""
    return values[0] if values else None
