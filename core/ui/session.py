"""Who is calling, may they, and how failures reach the person: shared by every UI handler.

Every Gradio event is callable over HTTP by any signed-in session (STACK_NOTES 1.4), so no
handler trusts what the page sends: the principal is re-read from the signed session cookie of
the request on every call, the tenant a dropdown sends is re-checked with `authorize`, and a
refusal is audited before the person sees it. Each handler starts the same way:

    with ui_call(services, request) as call:   # the principal; failures become gr.Error
        call.check(team, "chat")                # authorize; a refusal is audited first
        ...
        call.record_ok("ui_upload", team, detail)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import gradio as gr

from core.audit.auditor import AuditEvent
from core.auth.principal import principal_from_request
from core.errors import NotAuthenticated, PermissionDenied, RateLimited, TenantLLMError
from core.identity import Principal
from core.rbac import Action, authorize
from core.services import Services

log = logging.getLogger(__name__)

GENERIC_ERROR = "Something went wrong on our side. It has been logged; please try again."


def principal_of(request: gr.Request | None) -> Principal:
    """The signed-in principal of this request (never a value the page sent)."""

    raw = getattr(request, "request", None) if request is not None else None
    principal = principal_from_request(raw) if raw is not None else None
    if principal is None:
        raise NotAuthenticated("Your session has ended. Reload the page to sign in again.")
    return principal


@dataclass(frozen=True)
class UiCall:
    """One call of a UI handler: who made it, and the checks and audit rows made for them."""

    services: Services
    principal: Principal
    request: gr.Request | None

    def check(self, tenant_id: str | None, action: Action) -> None:
        """`authorize`, and audit the refusal (outcome `denied`) before raising it."""
        try:
            authorize(self.principal, tenant_id, action)
        except PermissionDenied as exc:
            self.services.auditor.record(
                AuditEvent.from_request(
                    self.request,
                    action=f"ui_{action}",
                    outcome="denied",
                    principal=self.principal,
                    tenant_id=tenant_id,
                    status=exc.status,
                    error_class=type(exc).__name__,
                    detail=exc.message[:500],
                )
            )
            raise

    def record_ok(
        self,
        action: str,
        tenant_id: str | None,
        detail: str | None = None,
        started: float | None = None,
    ) -> None:
        """Audit a successful UI action (documents changed, audit log viewed, keys managed)."""
        self.services.auditor.record(
            AuditEvent.from_request(
                self.request,
                action=action,
                outcome="ok",
                principal=self.principal,
                tenant_id=tenant_id,
                latency_ms=(time.monotonic() - started) * 1000.0 if started else 0.0,
                detail=detail,
            )
        )


@contextmanager
def ui_call(services: Services, request: gr.Request | None) -> Iterator[UiCall]:
    """The preamble of every handler: who is calling, and their failures shown as `gr.Error`.

    Signed out is `NotAuthenticated` ("Your session has ended..."), shown like any other
    failure of the block.
    """
    with shown_as_error():
        yield UiCall(services, principal_of(request), request)


def may(principal: Principal, tenant_id: str | None, action: Action) -> bool:
    """Whether the principal may do this (for showing or hiding controls; not audited)."""
    try:
        authorize(principal, tenant_id, action)
    except PermissionDenied:
        return False
    return True


def user_message(exc: BaseException) -> str:
    """What the person reads for this failure: ours verbatim, anything else generic."""
    if isinstance(exc, RateLimited):
        return f"{exc.message} Try again in {exc.retry_after} seconds."
    if isinstance(exc, TenantLLMError):
        return exc.message
    return GENERIC_ERROR


def shown_error(exc: BaseException) -> gr.Error:
    """The `gr.Error` the person sees for `exc` (no traceback reaches the page)."""
    return gr.Error(user_message(exc), print_exception=False)


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
