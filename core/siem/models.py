"""The `siem_cursors` table: one row per consumer of the audit log (a sink or the alerts).

`last_seq` is the audit `seq` of the last row the consumer acknowledged; it only moves
forward, by compare-and-set (core/siem/cursor.py), so two deliverers for one sink (two app
replicas) can duplicate a batch but never move the cursor back or past an unsent row.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base


class SiemCursorRow(Base):
    """Where one consumer stands in the audit log, and its last failure."""

    __tablename__ = "siem_cursors"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    last_seq: Mapped[int] = mapped_column(BigInteger, nullable=False)
    delivered: Mapped[int] = mapped_column(BigInteger, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    failures: Mapped[int] = mapped_column(Integer, nullable=False)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
