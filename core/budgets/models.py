"""The budget tables (created by migration 0005, never by `create_all`)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, String
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base

TEAM = "*"  # the subject of a team's own row: never a principal's subject


class BudgetRow(Base):
    """A team's budgets (subject `*`) or one member's override (subject = principal subject)."""

    __tablename__ = "budgets"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject: Mapped[str] = mapped_column(String(255), primary_key=True)
    daily: Mapped[int | None] = mapped_column(BigInteger)
    monthly: Mapped[int | None] = mapped_column(BigInteger)
    member_daily: Mapped[int | None] = mapped_column(BigInteger)  # team rows only
    member_monthly: Mapped[int | None] = mapped_column(BigInteger)  # team rows only
    updated_by: Mapped[str] = mapped_column(String(255))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CounterRow(Base):
    """Tokens used and reserved by a team (`*`) or a member in one day or month."""

    __tablename__ = "budget_counters"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject: Mapped[str] = mapped_column(String(255), primary_key=True)
    period: Mapped[str] = mapped_column(String(10), primary_key=True)
    used: Mapped[int] = mapped_column(BigInteger)
    reserved: Mapped[int] = mapped_column(BigInteger)


class ReservationRow(Base):
    """A turn in flight: what it holds on its four counters until it settles."""

    __tablename__ = "budget_reservations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(255))
    day: Mapped[str] = mapped_column(String(10))
    month: Mapped[str] = mapped_column(String(7))
    amount: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
