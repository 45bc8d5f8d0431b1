"""The `team_adapters` table (created by migration 0011, never by `create_all`)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Float, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base


class AdapterRow(Base):
    """One trained adapter version of one team; at most one per team is `active`."""

    __tablename__ = "team_adapters"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)  # 1, 2, ... per team
    path: Mapped[str] = mapped_column(Text)  # the PEFT folder (adapter_config.json + weights)
    base_model: Mapped[str] = mapped_column(Text)  # the model it was trained on
    rank: Mapped[int] = mapped_column(Integer)
    examples: Mapped[int] = mapped_column(Integer)
    steps: Mapped[int] = mapped_column(Integer)
    final_loss: Mapped[float] = mapped_column(Float)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
