"""Which budgets apply, without asking the database on every turn: `BudgetCache`.

Budgets change rarely (an operator runs `tenantllm budgets set`); turns are constant. So a
process keeps each team's budget rows in memory for `ttl` seconds: a turn of a team without
budgets costs a dict lookup, and a budgeted turn reads only its counters.

When a change is seen:
- in this process, at once: `set_budget` calls `changed(url)`, which bumps the database's
  generation; every cache of that database compares it before trusting an entry. (A
  per-URL counter, like core/db's engines: two stores of one database in one process, the
  CLI's and the server's in a test, must see each other's writes.)
- in other processes (app replicas, the CLI), within `ttl` seconds, when the entry is
  reloaded; `BudgetStore.allowance` (the line under the chat) reads the rows itself and
  drops an entry that disagrees. Until then a replica applies the old budget.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import select

from core.budgets.models import BudgetRow
from core.db import session_scope

_generations: dict[str, int] = {}
_lock = threading.Lock()


def changed(url: str) -> None:
    """Budgets of the database at `url` changed: every cache of it in this process reloads."""
    with _lock:
        _generations[url] = _generations.get(url, 0) + 1


def generation(url: str) -> int:
    """How many changes this process has made to the budgets of `url` (0: none)."""
    return _generations.get(url, 0)


@dataclass(frozen=True)
class TeamBudgets:
    """A team's budget rows (subject -> row) as read at `loaded_at` (monotonic seconds)."""

    rows: Mapping[str, BudgetRow]
    loaded_at: float
    generation: int


class BudgetCache:
    """Every team's budget rows, each reloaded when older than `ttl` seconds."""

    def __init__(self, database_url: str, ttl: float) -> None:
        self.database_url = database_url
        self.ttl = ttl
        self._teams: dict[str, TeamBudgets] = {}

    def fresh(self, tenant_id: str) -> TeamBudgets | None:
        """The team's cached rows if they may still be trusted; None: reload them."""
        entry = self._teams.get(tenant_id)
        if entry is None or entry.generation != generation(self.database_url):
            return None
        if time.monotonic() - entry.loaded_at >= self.ttl:
            return None
        return entry

    def known_without_budgets(self, tenant_id: str) -> bool:
        """True when the team surely has no budget row (so no turn of it is counted)."""
        entry = self.fresh(tenant_id)
        return entry is not None and not entry.rows

    def team(self, tenant_id: str) -> TeamBudgets:
        """The team's rows: cached, or read from the database now (one indexed read)."""
        entry = self.fresh(tenant_id)
        if entry is None:
            seen = generation(self.database_url)  # before reading: a change during it reloads
            query = select(BudgetRow).where(BudgetRow.tenant_id == tenant_id)
            with session_scope(self.database_url) as session:
                rows = {row.subject: row for row in session.scalars(query)}
            entry = TeamBudgets(rows, time.monotonic(), seen)
            self._teams[tenant_id] = entry
        return entry

    def drop(self, tenant_id: str) -> None:
        """Forget the team's rows (they were seen to differ from the database)."""
        self._teams.pop(tenant_id, None)
