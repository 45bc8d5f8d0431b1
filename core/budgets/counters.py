"""The SQL of a turn's counters: one UPSERT adds to the four counters and returns them.

`add` is `INSERT ... ON CONFLICT DO UPDATE SET used = used + ..., reserved = reserved + ...
RETURNING ...` (PostgreSQL 9.5+, SQLite 3.35+): it creates a missing counter, locks it, adds
to it and returns the new values in one statement. The rows go in one sorted order, and
PostgreSQL locks them in the order of the VALUES list, so two turns never wait for each
other in a cycle. A refusal is decided with the rows held and rolls the transaction back.
(SQLite has one writer at a time, and the UPSERT is every transaction's first statement,
so it takes the write lock at once.)

`settle` on PostgreSQL is one statement in autocommit (one round trip): a data-modifying
WITH deletes the reservation row and the UPSERT gives back what the deleted row held, so
whoever deletes the row (the turn or the sweeper) gives the reservation back, never both.
On SQLite the same two steps run in one transaction.

The statements are written once as text: SQLAlchemy cannot cache the compiled form of its
own multi-row ON CONFLICT construct, and compiling it per call took 1-2 ms a turn.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, TextClause, text
from sqlalchemy.dialects import postgresql, sqlite

from core.budgets.connections import autocommit, budget_transaction
from core.budgets.models import TEAM, CounterRow, ReservationRow
from core.errors import ConfigError

TABLE = CounterRow.__tablename__
RESERVATIONS = ReservationRow.__tablename__
Counters = dict[tuple[str, str], tuple[int, int]]  # (subject, period) -> (used, reserved)
_SET = (
    f"ON CONFLICT (tenant_id, subject, period) DO UPDATE SET "
    f"used = {TABLE}.used + excluded.used, reserved = {TABLE}.reserved + excluded.reserved "
    "RETURNING subject, period, used, reserved"
)


def insert_for(dialect: str) -> Any:
    """The dialect's `insert` (the one with ON CONFLICT); ConfigError for other databases."""
    if dialect == "postgresql":
        return postgresql.insert
    if dialect == "sqlite":
        return sqlite.insert
    raise ConfigError(f"Token budgets support SQLite and PostgreSQL, not {dialect}.")


def _keys(tenant_id: str, subject: str, periods: Sequence[str]) -> dict[str, Any]:
    """Bound values naming the counters of the team and `subject` in `periods`, sorted."""
    keys = sorted({(who, period) for who in (TEAM, subject) for period in periods})
    params: dict[str, Any] = {"tenant_id": tenant_id, "rows": len(keys)}
    for i, (who, period) in enumerate(keys):
        params[f"subject_{i}"], params[f"period_{i}"] = who, period
    return params


def _counters(result: Any) -> Counters:
    return {(r.subject, r.period): (int(r.used), int(r.reserved)) for r in result}


def add(
    conn: Connection,
    tenant_id: str,
    subject: str,
    periods: Sequence[str],
    *,
    used: int = 0,
    reserved: int = 0,
) -> Counters:
    """Add to the counters of the team and `subject` in `periods` (made if missing); their
    new values, locked until the transaction ends."""
    insert_for(conn.dialect.name)  # ConfigError for a database without this syntax
    params = {**_keys(tenant_id, subject, periods), "used": used, "reserved": reserved}
    return _counters(conn.execute(_upsert(params.pop("rows")), params))


def reserve(
    conn: Connection,
    reservation: dict[str, Any],
    periods: Sequence[str],
) -> Counters:
    """Store the `reservation` row (id, tenant_id, subject, day, month, amount, created_at)
    and add its amount to the reserved tokens of its counters; their new values, locked.

    One statement on PostgreSQL (a data-modifying WITH), two on SQLite.
    """
    tenant_id, subject = reservation["tenant_id"], reservation["subject"]
    amount = reservation["amount"]
    if conn.dialect.name != "postgresql":
        counters = add(conn, tenant_id, subject, periods, reserved=amount)
        conn.execute(_INSERT_RESERVATION, reservation)
        return counters
    params = {**_keys(tenant_id, subject, periods), "used": 0, "reserved": amount}
    return _counters(conn.execute(_reserve_pg(params.pop("rows")), {**params, **reservation}))


def settle(
    url: str,
    reservation_id: str,
    counter_keys: tuple[str, str, Sequence[str]],
    amount: int,
    used: int,
) -> Counters:
    """Delete the reservation; give back `amount` if this deleted it, and count `used`.

    `counter_keys`: tenant, subject and periods of the reservation's counters.
    """
    params = {**_keys(*counter_keys), "id": reservation_id, "used": used}
    rows = params.pop("rows")
    if url.startswith("postgresql"):
        with autocommit(url) as conn:
            return _counters(conn.execute(_settle_pg(rows), params))
    with budget_transaction(url) as conn:
        held = conn.execute(_DELETE, {"id": reservation_id}).rowcount == 1
        if not held and not used:
            return {}
        return _counters(conn.execute(_upsert(rows), {**params, "reserved": -amount * held}))


_COLUMNS = "id, tenant_id, subject, day, month, amount, created_at"
# Only constants (table names, numbered placeholders) are formatted into these texts.
_INSERT_RESERVATION = text(
    f"INSERT INTO {RESERVATIONS} ({_COLUMNS}) VALUES "  # noqa: S608
    "(:id, :tenant_id, :subject, :day, :month, :amount, :created_at)"
)
_DELETE = text(f"DELETE FROM {RESERVATIONS} WHERE id = :id")  # noqa: S608


@functools.cache
def _upsert(rows: int) -> TextClause:
    """The UPSERT of `rows` counters (the same text on both databases)."""
    values = ", ".join(
        f"(:tenant_id, :subject_{i}, :period_{i}, :used, :reserved)" for i in range(rows)
    )
    columns = "tenant_id, subject, period, used, reserved"
    return text(f"INSERT INTO {TABLE} ({columns}) VALUES {values} {_SET}")  # noqa: S608


@functools.cache
def _reserve_pg(rows: int) -> TextClause:
    """Store the reservation row and reserve on its counters in one PostgreSQL statement."""
    held = _INSERT_RESERVATION.text
    return text(f"WITH held AS ({held}) {_upsert(rows).text}")


@functools.cache
def _settle_pg(rows: int) -> TextClause:
    """Delete the reservation and settle its counters in one PostgreSQL statement."""
    keys = ", ".join(f"(:subject_{i}, :period_{i})" for i in range(rows))
    return text(
        f"WITH gone AS (DELETE FROM {RESERVATIONS} WHERE id = :id RETURNING amount) "  # noqa: S608
        f"INSERT INTO {TABLE} (tenant_id, subject, period, used, reserved) "
        "SELECT CAST(:tenant_id AS VARCHAR), k.subject, k.period, CAST(:used AS BIGINT), "
        "-COALESCE((SELECT amount FROM gone), 0) "
        f"FROM (VALUES {keys}) AS k (subject, period) {_SET}"
    )


def seed(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert counters that do not exist yet (`rows`: tenant_id, subject, period, used)."""
    values = [{**row, "reserved": 0} for row in rows]
    for start in range(0, len(values), 500):  # well under SQLite's limit of bound values
        stmt = insert_for(conn.dialect.name)(CounterRow.__table__).values(
            values[start : start + 500]
        )
        conn.execute(stmt.on_conflict_do_nothing())
