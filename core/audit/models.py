"""The `audit_events` table: one row per audited request, chained by hash.

`seq` is assigned by the single writer under a database lock, so it is gap-free and ordered;
`event_id` is assigned when the event is recorded and makes replays idempotent. Lists
(document ids, flags) are stored as JSON text so SQLite and PostgreSQL share one schema.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base

# Column widths; the recorder truncates to these before hashing, so what is stored is
# exactly what was hashed on every backend.
LIMITS = {
    "request_id": 64,
    "user_sub": 255,
    "user_email": 255,
    "tenant_id": 64,
    "action": 64,
    "outcome": 16,
    "client_ip": 64,
    "user_agent": 512,
    "prompt_digest": 64,
    "error_class": 128,
}


class AuditEventRow(Base):
    """One audit event as stored (see core/audit/chain.py for how `hash` is computed)."""

    __tablename__ = "audit_events"
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    event_id: Mapped[str] = mapped_column(String(32), nullable=False, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    request_id: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    user_sub: Mapped[str | None] = mapped_column(String(255))
    user_email: Mapped[str | None] = mapped_column(String(255))
    tenant_id: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)
    status: Mapped[int] = mapped_column(Integer, nullable=False)
    latency_ms: Mapped[float] = mapped_column(Float, nullable=False)
    tokens_in: Mapped[int] = mapped_column(Integer, nullable=False)
    tokens_out: Mapped[int] = mapped_column(Integer, nullable=False)
    document_ids: Mapped[str] = mapped_column(Text, nullable=False)  # JSON list
    client_ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    prompt_digest: Mapped[str | None] = mapped_column(String(64))
    prompt_text: Mapped[str | None] = mapped_column(Text)
    # sha256 of prompt_text, hashed in its place: retention may drop the text (chain.py).
    prompt_text_sha256: Mapped[str | None] = mapped_column(String(64))
    error_class: Mapped[str | None] = mapped_column(String(128))
    flags: Mapped[str] = mapped_column(Text, nullable=False)  # JSON list
    detail: Mapped[str | None] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)

    __table_args__ = (
        Index("ix_audit_events_created_at", "created_at"),
        Index("ix_audit_events_tenant_created", "tenant_id", "created_at"),
        Index("ix_audit_events_user_sub", "user_sub"),
        Index("ix_audit_events_action", "action"),
    )
