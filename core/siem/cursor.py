"""Cursors over the audit log: the rows after a position, moving it, how far behind it is.

Reading `seq > last_seq` in order never skips a row: the audit writer assigns `seq` inside
a transaction that holds the chain lock (core/audit/writer.py), so a row with a smaller
`seq` is always committed before one with a larger `seq` becomes visible.

`advance` is a compare-and-set on the old position: a deliverer whose view is stale (another
replica moved the cursor meanwhile) learns so and re-reads, and a cursor never moves back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from core.audit.models import AuditEventRow
from core.audit.query import AuditRecord
from core.db import get_engine, utcnow
from core.siem.models import SiemCursorRow

_audit = cast(Table, AuditEventRow.__table__)
_cursors = cast(Table, SiemCursorRow.__table__)
ERROR_MAX = 2000


@dataclass(frozen=True)
class CursorState:
    """One consumer's stored position and its last failure."""

    name: str
    kind: str
    last_seq: int
    delivered: int
    updated_at: datetime
    failures: int
    last_error: str | None
    last_error_at: datetime | None


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def ensure_cursor(url: str, name: str, kind: str, *, at_head: bool = False) -> int:
    """The position of `name`; a new cursor starts at 0 (the log's start), or at the head.

    Sinks start at 0: the SIEM gets the whole log. The alert rules and the webhook start at
    the head: alerts are about now, not a page for every window of last year's history.
    """
    engine = get_engine(url)
    with engine.connect() as conn:
        found = conn.execute(select(_cursors.c.last_seq).where(_cursors.c.name == name)).first()
        if found is not None:
            return int(found[0])
        start = int(conn.execute(select(func.max(_audit.c.seq))).scalar() or 0) if at_head else 0
        try:
            conn.execute(
                insert(_cursors).values(
                    name=name,
                    kind=kind,
                    last_seq=start,
                    delivered=0,
                    updated_at=utcnow(),
                    failures=0,
                )
            )
            conn.commit()
        except IntegrityError:  # another deliverer created it first: read theirs
            conn.rollback()
            return ensure_cursor(url, name, kind)
    return start


def read_cursor(url: str, name: str) -> CursorState | None:
    """The stored state of `name`, or None when it never ran."""
    with get_engine(url).connect() as conn:
        row = conn.execute(select(_cursors).where(_cursors.c.name == name)).mappings().first()
    if row is None:
        return None
    values = dict(row)
    values["updated_at"] = _utc(values["updated_at"])
    values["last_error_at"] = _utc(values["last_error_at"])
    return CursorState(**values)


def advance(url: str, name: str, from_seq: int, to_seq: int, count: int) -> bool:
    """Move `name` from `from_seq` to `to_seq` (acknowledged); False if it was not there."""
    statement = (
        update(_cursors)
        .where(_cursors.c.name == name, _cursors.c.last_seq == from_seq)
        .values(
            last_seq=to_seq,
            delivered=_cursors.c.delivered + count,
            updated_at=utcnow(),
            failures=0,
            last_error=None,
        )
    )
    with get_engine(url).connect() as conn:
        moved = conn.execute(statement).rowcount
        conn.commit()
    return moved == 1


def record_failure(url: str, name: str, error: str) -> None:
    """Count one failed delivery of `name` and keep its reason (the status shows it)."""
    statement = (
        update(_cursors)
        .where(_cursors.c.name == name)
        .values(
            failures=_cursors.c.failures + 1, last_error=error[:ERROR_MAX], last_error_at=utcnow()
        )
    )
    with get_engine(url).connect() as conn:
        conn.execute(statement)
        conn.commit()


def to_record(row: Any) -> AuditRecord:
    """An `AuditRecord` from a row of `audit_events` (a mapping)."""
    values = {f.name: row[f.name] for f in fields(AuditRecord)}
    values["created_at"] = _utc(row["created_at"])
    values["document_ids"] = json.loads(row["document_ids"] or "[]")
    values["flags"] = json.loads(row["flags"] or "[]")
    return AuditRecord(**values)


def rows_after(url: str, seq: int, limit: int) -> list[AuditRecord]:
    """Up to `limit` audit rows after `seq`, in `seq` order."""
    statement = select(_audit).where(_audit.c.seq > seq).order_by(_audit.c.seq).limit(limit)
    with get_engine(url).connect() as conn:
        return [to_record(row) for row in conn.execute(statement).mappings()]


def rows_between(url: str, since: datetime, last_seq: int) -> Iterator[AuditRecord]:
    """Rows created at or after `since` with `seq <= last_seq`, in `seq` order (streamed)."""
    statement = (
        select(_audit)
        .where(_audit.c.seq <= last_seq, _audit.c.created_at >= since)
        .order_by(_audit.c.seq)
    )
    with get_engine(url).connect() as conn:
        result = conn.execution_options(yield_per=1000).execute(statement)
        for row in result.mappings():
            yield to_record(row)


def stored_event_ids(url: str, event_ids: list[str]) -> set[str]:
    """Which of `event_ids` are in the audit log."""
    if not event_ids:
        return set()
    statement = select(_audit.c.event_id).where(_audit.c.event_id.in_(event_ids))
    with get_engine(url).connect() as conn:
        return set(conn.scalars(statement))


@dataclass(frozen=True)
class Lag:
    """How far a cursor is behind the head of the audit log."""

    head_seq: int
    rows_behind: int
    seconds_behind: float  # age of the oldest row not yet acknowledged (0 when caught up)


def lag(url: str, last_seq: int, now: datetime | None = None) -> Lag:
    """The lag of a cursor at `last_seq`."""
    with get_engine(url).connect() as conn:
        head = conn.execute(select(func.max(_audit.c.seq))).scalar()
        oldest = conn.execute(
            select(_audit.c.created_at)
            .where(_audit.c.seq > last_seq)
            .order_by(_audit.c.seq)
            .limit(1)
        ).first()
    head_seq = int(head or 0)
    if oldest is None:
        return Lag(head_seq, max(0, head_seq - last_seq), 0.0)
    created = _utc(oldest[0])
    assert created is not None
    age = ((now or utcnow()) - created).total_seconds()
    return Lag(head_seq, max(0, head_seq - last_seq), max(0.0, age))
