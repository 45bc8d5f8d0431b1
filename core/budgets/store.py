"""`BudgetStore`: budgets per team and member in the SQL database, and the counters of a turn.

Exact under concurrency and across app replicas, because the database is the truth and
every decision is taken with the counters locked: a turn's four counters (team day and
month, member day and month) are locked with SELECT ... FOR UPDATE, always in the same
order (so two turns never wait for each other in a cycle), checked against the budgets and
updated in that one transaction. SQLite has no row locks but one writer at a time, and every
such transaction starts with a write. A refused turn changes nothing.

A turn whose process dies never settles: its reservation row is released by the next turn of
its team once it is older than `STALE_AFTER` (no answer streams for that long).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from core.budgets.allowance import Allowance, Limit, Scope, refusal
from core.budgets.models import TEAM, BudgetRow, CounterRow, ReservationRow
from core.budgets.periods import Periods, Window
from core.db import session_scope, utcnow
from core.errors import BudgetUnavailable, ConfigError

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


class BudgetStore:
    """Budgets, counters and reservations of one deployment's database."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._next_sweep: dict[str, datetime] = {}  # tenant -> when this process sweeps next

    # --- a chat turn ------------------------------------------------------------------------

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
            return self._reserve(tenant_id, subject, amount, team_name, now)
        except SQLAlchemyError as exc:
            log.warning("token budgets of %s cannot be checked: %s", tenant_id, exc)
            raise BudgetUnavailable(
                "Token budgets cannot be checked right now; try again in a moment."
            ) from exc

    def _reserve(
        self, tenant_id: str, subject: str, amount: int, team_name: str, now: datetime | None
    ) -> Reservation | None:
        periods = Periods(now or utcnow())
        with session_scope(self.database_url) as session:
            caps = self._caps(session, tenant_id, subject)
        if not caps:
            return None  # one indexed read is all a team without budgets pays
        if periods.now >= self._next_sweep.get(tenant_id, periods.now):
            self._next_sweep[tenant_id] = periods.now + SWEEP_EVERY
            self.release_stale(tenant_id, periods.now)
        reservation_id = uuid.uuid4().hex
        with session_scope(self.database_url) as session:
            # A write first: SQLite then takes its write lock now (waiting for it), rather
            # than failing to upgrade a read transaction that another writer overtook.
            self._ensure_counters(session, tenant_id, subject, periods)
            keys = (periods.day, periods.month)
            counters = _read(session, tenant_id, subject, keys, lock=True)
            limits = limits_from(counters, subject, periods, caps)
            short = [x for x in limits if x.remaining < amount]
            if short:  # raising rolls back: nothing held
                raise refusal(min(short, key=lambda x: x.remaining), team_name, periods, amount)
            _add(session, tenant_id, subject, keys, reserved=amount)
            session.add(
                ReservationRow(
                    id=reservation_id, tenant_id=tenant_id, subject=subject, day=periods.day,
                    month=periods.month, amount=amount, created_at=periods.now,
                )
            )  # fmt: skip
        limits = [replace(x, reserved=x.reserved + amount) for x in limits]
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
        """Every budget that applies to `subject` in `tenant_id` and what is left of it."""
        periods = Periods(now or utcnow())
        with session_scope(self.database_url) as session:
            caps = self._caps(session, tenant_id, subject)
            keys = (periods.day, periods.month)
            counters = _read(session, tenant_id, subject, keys) if caps else {}
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
        with session_scope(self.database_url) as session:
            gone = delete(ReservationRow).where(ReservationRow.id == reservation_id)
            # Whoever deletes the row gives the reservation back: the turn or the sweeper,
            # never both. A turn settling after the sweeper still adds what it used.
            held = session.execute(gone).rowcount == 1  # type: ignore[attr-defined]
            give_back = amount if held else 0
            if give_back or used:
                _read(session, tenant_id, subject, periods, lock=True)  # the one lock order
                _add(session, tenant_id, subject, periods, used=used, reserved=-give_back)
            if after is None:
                return []
            now, caps = after
            counters = _read(session, tenant_id, subject, (now.day, now.month))
            return limits_from(counters, subject, now, caps)

    def _caps(self, session: Session, tenant_id: str, subject: str) -> Caps:
        rows = {
            row.subject: row
            for row in session.scalars(
                select(BudgetRow).where(
                    BudgetRow.tenant_id == tenant_id, BudgetRow.subject.in_((TEAM, subject))
                )
            )
        }
        return caps_from(rows.get(TEAM), rows.get(subject) if subject != TEAM else None)

    def _ensure_counters(
        self, session: Session, tenant_id: str, subject: str, periods: Periods
    ) -> None:
        rows = [
            {"tenant_id": tenant_id, "subject": who, "period": period, "used": 0, "reserved": 0}
            for who in (TEAM, subject)
            for period in (periods.day, periods.month)
        ]
        dialect = session.get_bind().dialect.name
        # INSERT ... ON CONFLICT DO NOTHING: both databases have it; SQLAlchemy spells it per
        # dialect. Any other database is refused loudly rather than counted wrongly.
        if dialect == "postgresql":
            session.execute(postgresql.insert(CounterRow).values(rows).on_conflict_do_nothing())
        elif dialect == "sqlite":
            session.execute(sqlite.insert(CounterRow).values(rows).on_conflict_do_nothing())
        else:
            raise ConfigError(f"Token budgets support SQLite and PostgreSQL, not {dialect}.")


Counters = dict[tuple[str, str], tuple[int, int]]  # (subject, period) -> (used, reserved)


def _read(
    session: Session, tenant_id: str, subject: str, periods: Sequence[str], *, lock: bool = False
) -> Counters:
    """The counters of the team and `subject` in `periods`; `lock`: FOR UPDATE, in order.

    Every transaction that changes counters locks them first, sorted, so two turns never
    wait for each other in a cycle; then it checks and writes with the rows held. (SQLite
    has no row locks: its one writer already holds the database.)
    """
    c = CounterRow.__table__.c
    query = select(c.subject, c.period, c.used, c.reserved).where(
        c.tenant_id == tenant_id, c.subject.in_((TEAM, subject)), c.period.in_(periods)
    )
    if lock:
        query = query.order_by(c.subject, c.period).with_for_update()
    return {(r.subject, r.period): (r.used, r.reserved) for r in session.execute(query)}


def _add(
    session: Session,
    tenant_id: str,
    subject: str,
    periods: Sequence[str],
    *,
    used: int = 0,
    reserved: int = 0,
) -> None:
    """Add to the four counters of the team and `subject` in `periods` (rows locked first)."""
    c = CounterRow.__table__.c
    session.execute(
        update(CounterRow)
        .where(c.tenant_id == tenant_id, c.subject.in_((TEAM, subject)), c.period.in_(periods))
        .values(used=c.used + used, reserved=c.reserved + reserved)
    )


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
