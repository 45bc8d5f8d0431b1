"""One retention pass over every team: remove what its policy says is too old, audit it.

Each team is done on its own: a failure in one team's pass is audited (`retention`, outcome
`error`) and the others still run. Per team with a policy, one audit event says what was
removed (conversations deleted, prompt texts dropped, old rows whose text had to stay), so
the log records its own pruning. Another team's rows are never touched: every statement
filters by the team (core/chat/conversations.py, core/audit/retention.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from core.audit.auditor import AuditEvent
from core.audit.retention import drop_prompt_text
from core.chat.conversations import delete_idle_conversations
from core.db import utcnow
from core.errors import TenantLLMError
from core.retention.policy import RetentionPolicy, policies
from core.services import Services

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeamRetention:
    """What one pass removed from one team."""

    tenant_id: str
    conversations_deleted: int
    prompt_texts_dropped: int
    prompt_texts_kept_legacy: int
    error: str | None = None

    def summary(self) -> str:
        """One line for the CLI and the audit event's detail."""
        if self.error is not None:
            return f"failed: {self.error}"
        kept = self.prompt_texts_kept_legacy
        legacy = f", {kept} kept (rows hashed over their text, before migration 0008)"
        return (
            f"{self.conversations_deleted} conversations deleted, "
            f"{self.prompt_texts_dropped} prompt texts dropped" + (legacy if kept else "")
        )


def apply_retention(
    services: Services, *, actor: str, now: datetime | None = None
) -> list[TeamRetention]:
    """Apply every team's policy as of `now` (default: this moment); audit each team's pass."""
    now = now or utcnow()
    done = []
    for policy in policies(services.settings.resolved_database_url, services.tenants.all()):
        if not policy.active:
            continue
        result = _apply_one(services, policy, now)
        _audit(services, result, policy, actor)
        done.append(result)
    return done


def _apply_one(services: Services, policy: RetentionPolicy, now: datetime) -> TeamRetention:
    url = services.settings.resolved_database_url
    deleted = dropped = legacy = 0
    try:
        if policy.conversation_days is not None:
            cutoff = now - timedelta(days=policy.conversation_days)
            deleted = delete_idle_conversations(url, policy.tenant_id, cutoff)
        if policy.prompt_text_days is not None:
            cutoff = now - timedelta(days=policy.prompt_text_days)
            texts = drop_prompt_text(url, policy.tenant_id, cutoff)
            dropped, legacy = texts.dropped, texts.kept_legacy
    except Exception as exc:  # one team's failure must not stop the others' retention
        log.exception("retention of team %s failed", policy.tenant_id)
        reason = exc.message if isinstance(exc, TenantLLMError) else type(exc).__name__
        return TeamRetention(policy.tenant_id, deleted, dropped, legacy, error=reason)
    return TeamRetention(policy.tenant_id, deleted, dropped, legacy)


def _audit(services: Services, result: TeamRetention, policy: RetentionPolicy, actor: str) -> None:
    days = f"policy: conversations {policy.conversation_days or 'kept'} days, "
    days += f"prompt text {policy.prompt_text_days or 'kept'} days"
    services.auditor.record(
        AuditEvent(
            action="retention",
            outcome="ok" if result.error is None else "error",
            user_sub=actor,
            tenant_id=result.tenant_id,
            status=200 if result.error is None else 500,
            detail=f"{result.summary()} ({days})",
        )
    )
