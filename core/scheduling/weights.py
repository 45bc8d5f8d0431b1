"""Each team's fair-share weight: the plugin's `Tenant.weight`, or an admin's override.

Overrides live in the SQL database (table `scheduling_weights`, migration 0006), so every app
replica applies the same weights. The scheduler reads weights on every admission decision, so
they are served from memory: `WeightBook.refresh()` reloads the overrides and is called at
most every `REFRESH_SECONDS` by the scheduler, in a thread, and right after an admin's change
in the process that made it. If the database cannot be read, the last weights stay in force.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import DateTime, Float, String, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base, session_scope, utcnow
from core.errors import InvalidRequest

log = logging.getLogger(__name__)
REFRESH_SECONDS = 30.0
MAX_WEIGHT = 1000.0


class WeightRow(Base):
    """An admin's weight for one team (created by migration 0006, never by `create_all`)."""

    __tablename__ = "scheduling_weights"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    weight: Mapped[float] = mapped_column(Float)
    updated_by: Mapped[str] = mapped_column(String(255))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class TeamWeight:
    """A team's weight in force and where it comes from (`plugin` or `admin`)."""

    tenant_id: str
    weight: float
    source: str


def check_weight(weight: float) -> float:
    """`weight` if it is a usable share (finite, > 0, <= MAX_WEIGHT); InvalidRequest otherwise."""
    if not math.isfinite(weight) or not 0 < weight <= MAX_WEIGHT:
        raise InvalidRequest(f"A weight is a number above 0 and at most {MAX_WEIGHT:g}.")
    return float(weight)


class WeightBook:
    """Weights by team: the plugins' defaults with the database's overrides on top."""

    def __init__(
        self,
        database_url: str,
        defaults: Mapping[str, float],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`defaults`: each registered team's `Tenant.weight`."""
        self.database_url = database_url
        self._defaults = dict(defaults)
        self._overrides: dict[str, float] = {}
        self._clock = clock
        self._loaded_at: float | None = None

    def weight(self, tenant_id: str) -> float:
        """The weight in force for `tenant_id` (1 for a team with no declaration)."""
        return self._overrides.get(tenant_id, self._defaults.get(tenant_id, 1.0))

    def stale(self) -> bool:
        """Whether the overrides are older than REFRESH_SECONDS (or were never read)."""
        return self._loaded_at is None or self._clock() - self._loaded_at >= REFRESH_SECONDS

    def refresh(self) -> None:
        """Reload the overrides (blocking I/O: call it in a thread from async code)."""
        self._loaded_at = self._clock()  # also on failure: do not retry on every request
        try:
            with session_scope(self.database_url) as session:
                rows = session.scalars(select(WeightRow)).all()
        except SQLAlchemyError as exc:
            log.warning("could not read fair-share weights (%s); keeping the last ones", exc)
            return
        self._overrides = {
            row.tenant_id: row.weight for row in rows if row.tenant_id in self._defaults
        }

    def set(self, tenant_id: str, weight: float | None, actor: str) -> TeamWeight:
        """Override `tenant_id`'s weight (None: back to the plugin's); the caller authorizes."""
        if tenant_id not in self._defaults:
            raise InvalidRequest(f"There is no team '{tenant_id}'.")
        with session_scope(self.database_url) as session:
            row = session.get(WeightRow, tenant_id)
            if weight is None:
                if row is not None:
                    session.delete(row)
            elif row is None:
                session.add(
                    WeightRow(
                        tenant_id=tenant_id,
                        weight=check_weight(weight),
                        updated_by=actor,
                        updated_at=utcnow(),
                    )
                )
            else:
                row.weight, row.updated_by, row.updated_at = check_weight(weight), actor, utcnow()
        self.refresh()
        return self.describe(tenant_id)

    def describe(self, tenant_id: str) -> TeamWeight:
        """The weight in force for `tenant_id` and its source."""
        source = "admin" if tenant_id in self._overrides else "plugin"
        return TeamWeight(tenant_id, self.weight(tenant_id), source)

    def all(self) -> list[TeamWeight]:
        """Every registered team's weight, sorted by id."""
        return [self.describe(t) for t in sorted(self._defaults)]
