"""The one audit event the guard writes about a request it refused or let through."""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import Scope

from core.audit.auditor import AuditEvent, Outcome
from core.errors import TenantLLMError
from core.identity import Principal
from core.services import Services


def record(
    services: Services,
    scope: Scope,
    principal: Principal | None,
    action: str,
    outcome: Outcome,
    status: int,
    detail: str,
    error: TenantLLMError | None = None,
) -> None:
    """Queue one audit row about this request (client address and user agent included)."""
    services.auditor.record(
        AuditEvent.from_request(
            Request(scope),
            action=action,
            outcome=outcome,
            principal=principal,
            status=status,
            error_class=type(error).__name__ if error else None,
            detail=detail[:500],
        )
    )
