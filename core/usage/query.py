"""The usage rows: one SQL aggregation over the audit log's chat turns.

Grouped in the database (GROUP BY team [, member] [, UTC day]), never by reading every row
into Python: a month of a busy team is millions of rows. The day is the audit query's own
bucket expression (`date_trunc` on PostgreSQL, `strftime` on SQLite), so the Audit and the
Usage tabs agree on where a day starts (UTC).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, distinct, func, select

from core.audit.models import AuditEventRow as T
from core.audit.query import as_datetime, bucket_expr
from core.db import get_engine
from core.errors import InvalidRequest

By = Literal["team", "user"]
CHAT_ACTIONS = ("chat", "api_chat")  # one audit row per chat turn (core/chat/turn.py)


@dataclass(frozen=True)
class UsageQuery:
    """What to add up: the window [since, until), the grouping, and an optional one team."""

    since: datetime | None
    until: datetime | None = None
    by: By = "team"
    per_day: bool = True
    tenant_id: str | None = None


@dataclass(frozen=True)
class UsageRow:
    """Usage of one team (or one member of it), on one UTC day or over the whole window."""

    day: str | None  # `2026-12-02`; None when summed over the window
    tenant_id: str
    user: str | None  # the member's subject (by="user"), else None
    email: str | None
    tokens_in: int
    tokens_out: int
    requests: int
    users: int  # distinct members who made those requests

    @property
    def tokens(self) -> int:
        """Prompt and completion tokens together (what a budget counts)."""
        return self.tokens_in + self.tokens_out


def counted() -> list[ColumnElement[bool]]:
    """The audit rows that count as usage (the package docstring says why)."""
    return [
        T.action.in_(CHAT_ACTIONS),
        T.tenant_id.is_not(None),
        T.tokens_in + T.tokens_out > 0,
    ]


def _window(q: UsageQuery, tenants: list[str] | None) -> list[ColumnElement[bool]]:
    where = counted()
    if q.since is not None:
        where.append(T.created_at >= _utc(q.since))
    if q.until is not None:
        where.append(T.created_at < _utc(q.until))
    if q.tenant_id is not None:
        where.append(T.tenant_id == q.tenant_id)
    if tenants is not None:
        where.append(T.tenant_id.in_(tenants))  # the caller's teams; [] matches nothing
    return where


def usage_rows(url: str, q: UsageQuery, *, tenants: list[str] | None) -> list[UsageRow]:
    """Usage per team (or member), per day if asked, oldest day first, then team, then member.

    `tenants` is the caller's scope (`rbac.allowed_tenants(principal, "read_usage")`; None
    for every team): it is required, so no caller can forget it.
    """
    if q.by not in ("team", "user"):
        raise InvalidRequest("Usage is grouped by team or by user.")
    if q.since is not None and q.until is not None and q.until <= q.since:
        raise InvalidRequest("The end of the window must come after its start.")
    with get_engine(url).connect() as conn:
        keys: list[Any] = [bucket_expr(conn, "day").label("day")] if q.per_day else []
        keys.append(T.tenant_id)
        if q.by == "user":
            keys.append(T.user_sub)
        sums = [
            func.max(T.user_email),
            func.sum(T.tokens_in),
            func.sum(T.tokens_out),
            func.count(),
            func.count(distinct(T.user_sub)),
        ]
        statement = select(*keys, *sums).where(and_(*_window(q, tenants)))
        statement = statement.group_by(*keys).order_by(*keys)
        return [_row(q, list(values)) for values in conn.execute(statement)]


def _row(q: UsageQuery, values: list[Any]) -> UsageRow:
    day = as_datetime(values.pop(0)).strftime("%Y-%m-%d") if q.per_day else None
    tenant = values.pop(0)
    user = values.pop(0) if q.by == "user" else None
    email, tokens_in, tokens_out, requests, users = values
    return UsageRow(
        day=day,
        tenant_id=str(tenant),
        user=user,
        email=email if q.by == "user" else None,
        tokens_in=int(tokens_in or 0),
        tokens_out=int(tokens_out or 0),
        requests=int(requests),
        users=int(users),
    )


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
