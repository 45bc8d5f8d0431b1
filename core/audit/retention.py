"""Dropping old prompt text from a team's audit rows, keeping the rows and the chain.

Only `prompt_text` is cleared; the row, its digest (`prompt_text_sha256`) and its hash stay,
so `Auditor.verify` still passes (core/audit/chain.py explains why). Rows written before
migration 0008 were hashed over the text itself: clearing it would break the chain there, so
they are left alone and counted (`kept_legacy`) for the operator to see.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update

from core.audit.models import AuditEventRow
from core.db import get_engine

_table = AuditEventRow.__table__
T = _table.c


@dataclass(frozen=True)
class TextDropped:
    """What clearing one team's old prompt text did."""

    dropped: int  # rows whose prompt text was cleared
    kept_legacy: int  # old rows hashed over their text (before migration 0008): left as they are


def drop_prompt_text(url: str, tenant_id: str, before: datetime) -> TextDropped:
    """Clear the prompt text of `tenant_id`'s audit rows created before `before`."""
    old = (T.tenant_id == tenant_id) & (T.created_at < before) & T.prompt_text.is_not(None)
    with get_engine(url).begin() as conn:
        digested = old & T.prompt_text_sha256.is_not(None)
        result = conn.execute(update(AuditEventRow).where(digested).values(prompt_text=None))
        legacy = conn.scalar(
            select(func.count()).select_from(_table).where(old & T.prompt_text_sha256.is_(None))
        )
    return TextDropped(int(result.rowcount or 0), int(legacy or 0))
