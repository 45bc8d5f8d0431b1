"""What the scheduler did in the last hour, per team: for the Admin page (and metrics).

In memory, per process: each app replica shows what it scheduled. Entries older than the
window are dropped as new ones arrive, so memory stays bounded by an hour of traffic.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

WINDOW_SECONDS = 3600.0


@dataclass(frozen=True)
class TeamService:
    """One team's last hour: tokens served, queue waits and refusals."""

    tenant_id: str
    tokens: int
    turns: int
    wait_p50_ms: float
    wait_p95_ms: float
    refused: int


@dataclass(frozen=True)
class _Entry:
    at: float
    tenant_id: str
    wait_s: float
    tokens: int
    refused: bool


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100.0 * len(ordered) + 0.5) - 1))
    return ordered[rank]


class ServiceLog:
    """A rolling hour of admissions, served tokens and refusals."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """`clock`: seconds, monotonic (a test may pass its own)."""
        self._clock = clock
        self._entries: deque[_Entry] = deque()

    def served(self, tenant_id: str, wait_s: float, tokens: int) -> None:
        """A turn of `tenant_id` that waited `wait_s` for the engine and used `tokens`."""
        self._add(_Entry(self._clock(), tenant_id, wait_s, tokens, False))

    def refused(self, tenant_id: str, wait_s: float) -> None:
        """A turn of `tenant_id` refused after waiting `wait_s`."""
        self._add(_Entry(self._clock(), tenant_id, wait_s, 0, True))

    def summary(self) -> list[TeamService]:
        """Per team, sorted by id: the last hour's tokens, turns, waits and refusals."""
        self._prune()
        teams = sorted({e.tenant_id for e in self._entries})
        rows = []
        for tenant_id in teams:
            mine = [e for e in self._entries if e.tenant_id == tenant_id]
            waits = [e.wait_s * 1000.0 for e in mine if not e.refused]
            rows.append(
                TeamService(
                    tenant_id=tenant_id,
                    tokens=sum(e.tokens for e in mine),
                    turns=len(waits),
                    wait_p50_ms=_percentile(waits, 50),
                    wait_p95_ms=_percentile(waits, 95),
                    refused=sum(1 for e in mine if e.refused),
                )
            )
        return rows

    def _add(self, entry: _Entry) -> None:
        self._entries.append(entry)
        self._prune()

    def _prune(self) -> None:
        horizon = self._clock() - WINDOW_SECONDS
        while self._entries and self._entries[0].at < horizon:
            self._entries.popleft()
