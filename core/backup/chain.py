"""The last step of a restore or a migration: verify the copied audit chain, then record the
operation itself in it (its verdict included), as the operator.
"""

from __future__ import annotations

from core.audit.auditor import AuditEvent, Auditor
from core.audit.chain import ChainReport
from core.config import Settings
from core.rbac import operator_principal


def verify_and_record(settings: Settings, action: str, detail: str) -> ChainReport:
    """Verify the chain of the install `settings` describe, then audit `action` in it."""
    auditor = Auditor(settings)
    try:
        chain = auditor.verify()
        auditor.record(
            AuditEvent.from_request(
                None,
                action=action,
                outcome="ok" if chain.ok else "error",
                principal=operator_principal(),
                status=200 if chain.ok else 500,
                detail=f"{detail}: {chain.message}",
            )
        )
    finally:
        auditor.close()
    return chain
