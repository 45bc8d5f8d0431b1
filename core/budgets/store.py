"""`BudgetStore`: budgets per team and member in the SQL database, and the counters of a turn.

Exact under concurrency and across app replicas, because the database is the truth and
every decision is taken with the counters locked: a turn's four counters (team day and
month, member day and month) are created if missing, locked and added to by one UPSERT, in
one sorted order (core/budgets/counters.py); the turn is refused, and the transaction rolled
back, when a budget cannot hold what it reserved. A refused turn changes nothing.

What it costs a turn: a team without budgets, nothing but a dict lookup (the rows are cached:
core/budgets/cache.py); a budgeted turn, one short transaction to reserve and one to settle,
neither waiting for the disk.

A turn whose process dies never settles: its reservation row is released by the next turn of
its team once it is older than `STALE_AFTER` (no answer streams for that long).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import Connection, select
from sqlalchemy.exc import SQLAlchemyError

from core.budgets.allowance import Allowance, Limit, Scope, refusal
from core.budgets.cache import BudgetCache
from core.budgets.connections import budget_transaction, retry_once_on_disconnect
from core.budgets.counters import Counters, reserve, settle
from core.budgets.models import TEAM, BudgetRow, CounterRow, ReservationRow
from core.budgets.periods import Periods, Window
from core.db import session_scope, utcnow
from core.errors import BudgetUnavailable

log = logging.getLogger(__name__)
STALE_AFTER = timedelta(hours=1)
SWEEP_EVERY = timedelta(minutes=1)  # per team and process: the sweep costs a read per turn
Caps = dict[tuple[Scope, Window], int]


@dataclass(frozen=True)
class Reservation:
    """What one accepted turn holds until it settles, and what was left after reserving."""

    id: str
    tenant_id: str
    subject: str
    team_name: str
    day: str
    month: str
    amount: int
    allowance: Allowance
    caps: Caps


def caps_from(team: BudgetRow | None, member: BudgetRow | None) -> Caps:
    """The budgets that apply to a member: the team's, then the member's own or the default."""
    values: dict[tuple[Scope, Window], int | None] = {
        ("team", "day"): team.daily if team else None,
        ("team", "month"): team.monthly if team else None,
        ("member", "day"): team.member_daily if team else None,
        ("member", "month"): team.member_monthly if team else None,
    }
    if member is not None:  # a person's (or a key's) own budget wins over the team default
        values[("member", "day")] = _first(member.daily, values[("member", "day")])
        values[("member", "month")] = _first(member.monthly, values[("member", "month")])
    return {key: value for key, value in values.items() if value is not None}


def _first(*values: int | None) -> int | None:
    return next((v for v in values if v is not None), None)


def _caps_of(rows: Mapping[str, BudgetRow], subject: str) -> Caps:
    return caps_from(rows.get(TEAM), rows.get(subject) if subject != TEAM else None)


class BudgetStore:
    """Budgets, counters and reservations of one deployment's database."""

    def __init__(self, database_url: str, cache_seconds: float = 2.0) -> None:
        self.database_url = database_url
        self.cache = BudgetCache(database_url, cache_seconds)
        self._next_sweep: dict[str, datetime] = {}  # tenant -> when this process sweeps next

    # --- a chat turn ------------------------------------------------------------------------

    def known_without_budgets(self, tenant_id: str) -> bool:
        """True when no budget applies to anyone in `tenant_id`, known without the database
        (the turn then skips `reserve` and its thread altogether)."""
        return self.cache.known_without_budgets(tenant_id)

    def reserve(
        self,
        tenant_id: str,
        subject: str,
        amount: int,
        *,
        team_name: str,
        now: datetime | None = None,
    ) -> Reservation | None:
        """Hold `amount` tokens on every counter of this member, or raise BudgetExceeded.

        None (nothing held, nothing counted) when no budget applies to the member.
        BudgetUnavailable when the database cannot be asked: budgets fail closed.
        """
        try:
            return retry_once_on_disconnect(
                lambda: self._reserve(tenant_id, subject, amount, team_name, now)
            )
        except SQLAlchemyError as exc:
            log.warning("token budgets of %s cannot be checked: %s", tenant_id, exc)
            raise BudgetUnavailable(
                "Token budgets cannot be checked right now; try again in a moment."
            ) from exc

    def _reserve(
        self, tenant_id: str, subject: str, amount: int, team_name: str, now: datetime | None
    ) -> Reservation | None:
        periods = Periods(now or utcnow())
        caps = _caps_of(self.cache.team(tenant_id).rows, subject)
        if not caps:
            return None
        if periods.now >= self._next_sweep.get(tenant_id, periods.now):
            self._next_sweep[tenant_id] = periods.now + SWEEP_EVERY
            self.release_stale(tenant_id, periods.now)
        reservation_id = uuid.uuid4().hex
        row = {"id": reservation_id, "tenant_id": tenant_id, "subject": subject,
               "day": periods.day, "month": periods.month, "amount": amount,
               "created_at": periods.now}  # fmt: skip
        with budget_transaction(self.database_url) as conn:
            counters = reserve(conn, row, (periods.day, periods.month))
            limits = limits_from(counters, subject, periods, caps)  # with this turn's amount
            before = [replace(x, reserved=x.reserved - amount) for x in limits]
            short = [x for x in before if x.remaining < amount]
            if short:  # raising rolls back: nothing held, no reservation row
                raise refusal(min(short, key=lambda x: x.remaining), team_name, periods, amount)
        allowance = Allowance(team_name, periods, tuple(limits))
        return Reservation(
            reservation_id, tenant_id, subject, team_name, periods.day, periods.month, amount,
            allowance, caps,
        )  # fmt: skip

    def settle(self, reservation: Reservation, used: int, now: datetime | None = None) -> Allowance:
        """Replace the reservation by what the turn `used`; what is left afterwards.

        A database failure is logged, not raised (the answer is already given): the
        reservation is then released by the sweeper, and what was used goes uncounted.
        """
        r, periods = reservation, Periods(now or utcnow())
        try:
            limits = self._settle(
                r.id, r.tenant_id, r.subject, (r.day, r.month), r.amount, max(0, used),
                (periods, r.caps),
            )  # fmt: skip
            return Allowance(r.team_name, periods, tuple(limits))
        except SQLAlchemyError:
            log.exception("settling %s tokens of %s in %s failed", used, r.subject, r.tenant_id)
            return r.allowance

    def allowance(
        self, tenant_id: str, subject: str, *, team_name: str, now: datetime | None = None
    ) -> Allowance:
        """Every budget that applies to `subject` in `tenant_id` and what is left of it.

        Read from the database, not the cache (people look at this line to see a change
        apply); a cached entry that disagrees is dropped, so the next turn reloads it.
        """
        periods = Periods(now or utcnow())
        query = select(BudgetRow).where(
            BudgetRow.tenant_id == tenant_id, BudgetRow.subject.in_((TEAM, subject))
        )
        with session_scope(self.database_url) as session:
            caps = _caps_of({row.subject: row for row in session.scalars(query)}, subject)
            keys = (periods.day, periods.month)
            conn = session.connection()
            counters = _read(conn, tenant_id, subject, keys) if caps else {}
        cached = self.cache.fresh(tenant_id)
        if cached is not None and _caps_of(cached.rows, subject) != caps:
            self.cache.drop(tenant_id)
        return Allowance(team_name, periods, tuple(limits_from(counters, subject, periods, caps)))

    def release_stale(self, tenant_id: str, now: datetime | None = None) -> int:
        """Give back what turns of `tenant_id` older than STALE_AFTER still hold; how many."""
        cutoff = (now or utcnow()) - STALE_AFTER
        R = ReservationRow
        query = select(R).where(R.tenant_id == tenant_id, R.created_at < cutoff).limit(50)
        with session_scope(self.database_url) as session:
            stale = list(session.scalars(query))
        for row in stale:
            self._settle(row.id, row.tenant_id, row.subject, (row.day, row.month), row.amount, 0)
        return len(stale)

    # --- storage ----------------------------------------------------------------------------

    def _settle(
        self,
        reservation_id: str,
        tenant_id: str,
        subject: str,
        periods: tuple[str, str],
        amount: int,
        used: int,
        after: tuple[Periods, Caps] | None = None,
    ) -> list[Limit]:
        """Give back `amount` (if still held) and count `used`; the limits `after` (if asked)."""
        counters = settle(self.database_url, reservation_id, (tenant_id, subject, periods),
                          amount, used)  # fmt: skip
        if after is None:
            return []
        now, caps = after
        if not counters or (now.day, now.month) != periods:  # nothing changed, or a new day
            with session_scope(self.database_url) as session:
                counters = _read(session.connection(), tenant_id, subject, (now.day, now.month))
        return limits_from(counters, subject, now, caps)


def _read(conn: Connection, tenant_id: str, subject: str, periods: Sequence[str]) -> Counters:
    """The counters of the team and `subject` in `periods` (without locking them)."""
    c = CounterRow.__table__.c
    query = select(c.subject, c.period, c.used, c.reserved).where(
        c.tenant_id == tenant_id, c.subject.in_((TEAM, subject)), c.period.in_(periods)
    )
    return {(r.subject, r.period): (r.used, r.reserved) for r in conn.execute(query)}


def limits_from(counters: Counters, subject: str, periods: Periods, caps: Caps) -> list[Limit]:
    """Each budget in `caps` with what its counter says is used and held."""
    limits = []
    for (scope, window), cap in caps.items():
        row = counters.get((TEAM if scope == "team" else subject, periods.key(window)), (0, 0))
        limits.append(Limit(scope, window, cap, row[0], row[1]))
    return limits


def changes_summary(changes: Mapping[str, int | None]) -> str:
    """`daily=2,000,000 monthly=off`: a budget change as the audit log and the CLI say it."""
    return " ".join(f"{k}={'off' if v is None else f'{v:,}'}" for k, v in changes.items())
