"""Reading the audit log: filtered pages, chart aggregates and CSV export.

Filters are always applied in SQL, and the tenant filter is an exact match, so a page for
tenant B can never carry tenant A's rows whatever the other filters say. A team admin's slice
(`scoped_to`) adds `tenant_id IN (their teams)`, which no row without a tenant matches.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import IO, Any, Literal, TypeVar

from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.engine import Connection

from core.audit.models import AuditEventRow
from core.db import get_engine
from core.errors import InvalidRequest

Bucket = Literal["minute", "hour", "day"]
MAX_PAGE_SIZE = 1000
_SQLITE_BUCKETS = {"minute": "%Y-%m-%d %H:%M:00", "hour": "%Y-%m-%d %H:00:00", "day": "%Y-%m-%d"}
T = AuditEventRow
_table = AuditEventRow.__table__


@dataclass(frozen=True)
class AuditFilters:
    """What to show; every field is optional and all given ones must match."""

    since: datetime | None = None
    until: datetime | None = None
    tenant_id: str | None = None
    user: str | None = None  # matches the subject or the email exactly
    action: str | None = None
    outcome: str | None = None
    flagged_only: bool = False
    # The caller's slice: only these tenants' rows (None: no limit). Set by `scoped_to`.
    tenant_ids: tuple[str, ...] | None = None


def scoped_to(filters: AuditFilters, tenants: list[str] | None) -> AuditFilters:
    """`filters` limited to the rows of `tenants` (rbac.allowed_tenants; None: every row).

    An empty list matches nothing: a caller with no team gets no rows, never all of them.
    """
    if tenants is None:
        return filters
    return replace(filters, tenant_ids=tuple(tenants))


@dataclass(frozen=True)
class AuditRecord:
    """One stored event as the dashboard and CLI show it."""

    seq: int
    event_id: str
    created_at: datetime
    request_id: str
    user_sub: str | None
    user_email: str | None
    tenant_id: str | None
    action: str
    outcome: str
    status: int
    latency_ms: float
    tokens_in: int
    tokens_out: int
    document_ids: list[str]
    client_ip: str | None
    user_agent: str | None
    prompt_digest: str | None
    prompt_text: str | None
    error_class: str | None
    flags: list[str]
    detail: str | None
    prev_hash: str
    hash: str

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict (time as ISO 8601)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["created_at"] = self.created_at.isoformat()
        return data


@dataclass(frozen=True)
class AuditPage:
    """One page of events and how many match in total."""

    rows: list[AuditRecord]
    total: int


@dataclass(frozen=True)
class TimeBucketCount:
    """Requests of one tenant in one time bucket (bucket start, UTC)."""

    bucket: datetime
    tenant_id: str | None
    count: int


@dataclass(frozen=True)
class OutcomeCount:
    """How many events of one tenant had this outcome."""

    tenant_id: str | None
    outcome: str
    count: int


@dataclass(frozen=True)
class TenantTokens:
    """Token use of one tenant."""

    tenant_id: str | None
    tokens_in: int
    tokens_out: int
    requests: int


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def conditions(filters: AuditFilters) -> list[ColumnElement[bool]]:
    """The SQL conditions for `filters` (exact matches only)."""
    where: list[ColumnElement[bool]] = []
    if filters.since is not None:
        where.append(T.created_at >= _utc(filters.since))
    if filters.until is not None:
        where.append(T.created_at < _utc(filters.until))
    if filters.tenant_id is not None:
        where.append(T.tenant_id == filters.tenant_id)
    if filters.user is not None:
        where.append(or_(T.user_sub == filters.user, T.user_email == filters.user))
    if filters.action is not None:
        where.append(T.action == filters.action)
    if filters.outcome is not None:
        where.append(T.outcome == filters.outcome)
    if filters.flagged_only:
        where.append(T.flags != "[]")
    if filters.tenant_ids is not None:
        where.append(T.tenant_id.in_(filters.tenant_ids))  # NULL is in no list
    return where


_S = TypeVar("_S", bound=Select[*tuple[Any, ...]])


def _filtered(statement: _S, filters: AuditFilters) -> _S:
    where = conditions(filters)
    return statement.where(and_(*where)) if where else statement


def _record(row: Any) -> AuditRecord:
    values = {f.name: row[f.name] for f in fields(AuditRecord)}
    values["created_at"] = _utc(row["created_at"])
    values["document_ids"] = json.loads(row["document_ids"] or "[]")
    values["flags"] = json.loads(row["flags"] or "[]")
    return AuditRecord(**values)


def _rows(conn: Connection, statement: Select[Any]) -> Iterator[AuditRecord]:
    for row in conn.execute(statement).mappings():
        yield _record(row)


def query(url: str, filters: AuditFilters, page: int, page_size: int) -> AuditPage:
    """One page (1-based) of matching events, newest first, and the total match count."""
    if page < 1 or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidRequest(f"page must be >= 1 and page_size between 1 and {MAX_PAGE_SIZE}.")
    rows_stmt = _filtered(select(_table), filters).order_by(T.seq.desc())
    rows_stmt = rows_stmt.limit(page_size).offset((page - 1) * page_size)
    with get_engine(url).connect() as conn:
        total = conn.execute(_filtered(select(func.count()).select_from(T), filters)).scalar_one()
        rows = list(_rows(conn, rows_stmt))
    return AuditPage(rows=rows, total=int(total))


def iter_records(url: str, filters: AuditFilters) -> Iterator[AuditRecord]:
    """Every matching event, oldest first (streamed)."""
    statement = _filtered(select(_table), filters).order_by(T.seq)
    with get_engine(url).connect() as conn:
        yield from _rows(conn.execution_options(yield_per=1000), statement)


def bucket_expr(conn: Connection, bucket: Bucket) -> ColumnElement[Any]:
    """The start of `created_at`'s UTC minute, hour or day, as this database computes it."""
    if bucket not in _SQLITE_BUCKETS:
        raise InvalidRequest("bucket must be minute, hour or day.")
    if conn.dialect.name == "postgresql":
        return func.date_trunc(bucket, func.timezone("UTC", T.created_at))
    return func.strftime(_SQLITE_BUCKETS[bucket], T.created_at)


def as_datetime(value: Any) -> datetime:
    """A bucket value as an aware UTC datetime (PostgreSQL gives datetimes, SQLite text)."""
    if isinstance(value, datetime):
        return _utc(value)
    return _utc(datetime.fromisoformat(str(value)))


def requests_per_tenant_over_time(
    url: str, filters: AuditFilters, bucket: Bucket
) -> list[TimeBucketCount]:
    """Event counts per (bucket, tenant), oldest bucket first."""
    with get_engine(url).connect() as conn:
        slot = bucket_expr(conn, bucket).label("bucket")
        statement = _filtered(select(slot, T.tenant_id, func.count()), filters)
        statement = statement.group_by(slot, T.tenant_id).order_by(slot, T.tenant_id)
        return [
            TimeBucketCount(as_datetime(b), tenant, int(n))
            for b, tenant, n in conn.execute(statement)
        ]


def denied_and_rate_limited(url: str, filters: AuditFilters) -> list[OutcomeCount]:
    """Counts of `denied` and `rate_limited` events per tenant."""
    statement = _filtered(select(T.tenant_id, T.outcome, func.count()), filters)
    statement = statement.where(T.outcome.in_(("denied", "rate_limited")))
    statement = statement.group_by(T.tenant_id, T.outcome).order_by(T.tenant_id, T.outcome)
    with get_engine(url).connect() as conn:
        return [OutcomeCount(t, o, int(n)) for t, o, n in conn.execute(statement)]


def tokens_per_tenant(url: str, filters: AuditFilters) -> list[TenantTokens]:
    """Summed prompt/completion tokens and request counts per tenant."""
    statement = _filtered(
        select(T.tenant_id, func.sum(T.tokens_in), func.sum(T.tokens_out), func.count()),
        filters,
    )
    statement = statement.group_by(T.tenant_id).order_by(T.tenant_id)
    with get_engine(url).connect() as conn:
        return [
            TenantTokens(t, int(i or 0), int(o or 0), int(n))
            for t, i, o, n in conn.execute(statement)
        ]


CSV_COLUMNS = [f.name for f in fields(AuditRecord)]


def csv_cell(value: Any) -> str:
    """One CSV cell: lists space-joined, times ISO, and never a spreadsheet formula."""
    if isinstance(value, list):
        value = " ".join(str(v) for v in value)
    elif isinstance(value, datetime):
        value = value.isoformat()
    text = "" if value is None else str(value)
    # Client-controlled text (user agent, prompt) must not run as a formula in a spreadsheet.
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        text = "'" + text
    return text


def write_csv(url: str, filters: AuditFilters, stream: IO[str]) -> int:
    """Stream matching events as CSV (header row, oldest first); returns the row count."""
    writer = csv.writer(stream)
    writer.writerow(CSV_COLUMNS)
    count = 0
    for record in iter_records(url, filters):
        writer.writerow([csv_cell(getattr(record, name)) for name in CSV_COLUMNS])
        count += 1
    return count


def export_csv(url: str, filters: AuditFilters) -> str:
    """Matching events as CSV text with a header row, oldest first."""
    buffer = io.StringIO()
    write_csv(url, filters, buffer)
    return buffer.getvalue()
