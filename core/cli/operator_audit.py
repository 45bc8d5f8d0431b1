"""The audit event of an operator's command: who is the operator on this machine.

`budgets set`, `retention set`, `keys create|revoke` and `usage` record what was asked (the
changes refused ones too) as `local:<os user>`, stored or spooled before the command exits.
"""

from __future__ import annotations

from core.audit.auditor import AuditEvent, Auditor
from core.audit.auditor import Outcome as AuditOutcome
from core.config import Settings
from core.rbac import operator_principal


def record_operator_action(
    settings: Settings,
    action: str,
    outcome: AuditOutcome,
    tenant_id: str | None,
    detail: str,
    error_class: str | None = None,
) -> None:
    """Write one audit event for an operator's command (stored or spooled before returning)."""
    auditor = Auditor(settings)
    auditor.record(
        AuditEvent.from_request(
            None,
            action=action,
            outcome=outcome,
            principal=operator_principal(),
            tenant_id=tenant_id,
            status=200 if outcome == "ok" else 400,
            error_class=error_class,
            detail=detail[:500],
        )
    )
    auditor.close()
