"""The audit log: one event per request, written off the request path, chained by hash.

`Auditor.record(event)` is all request code calls: it snapshots the event into a plain dict
(event id, UTC time, fields truncated to their columns) and appends it to the writer's queue,
so it neither blocks nor raises. The writer (core/audit/writer.py) stores batches in the
chain, or in the local spool while the database is down. Reading: core/audit/query.py
(dashboard, CLI), verification: core/audit/chain.py.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import logging
import math
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from core.audit import query as audit_query
from core.audit.chain import ChainChecker, ChainReport, format_time
from core.audit.models import LIMITS, AuditEventRow
from core.audit.query import (
    AuditFilters,
    AuditPage,
    OutcomeCount,
    TenantTokens,
    TimeBucketCount,
)
from core.audit.spool import Spool
from core.audit.writer import AuditWriter
from core.config import Settings
from core.db import get_engine
from core.metrics import AuditBacklog

if TYPE_CHECKING:
    from core.identity import Principal

__all__ = [
    "AuditEvent",
    "AuditFilters",
    "AuditPage",
    "Auditor",
    "ChainReport",
    "OutcomeCount",
    "TenantTokens",
    "TimeBucketCount",
    "caller_of",
]

log = logging.getLogger(__name__)

Outcome = Literal["ok", "denied", "error", "rate_limited", "cancelled"]
DETAIL_MAX = 2000
PROMPT_MAX = 100_000
INT_MIN, INT_MAX = -(2**31), 2**31 - 1


@dataclass
class AuditEvent:
    """What one request did. Fill in what is known; `record` does the rest."""

    action: str
    outcome: Outcome
    user_sub: str | None = None
    user_email: str | None = None
    tenant_id: str | None = None
    request_id: str = ""
    status: int = 200
    latency_ms: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    document_ids: list[str] = field(default_factory=list)
    client_ip: str | None = None
    user_agent: str | None = None
    prompt_digest: str | None = None
    prompt_text: str | None = None
    error_class: str | None = None
    flags: list[str] = field(default_factory=list)
    detail: str | None = None

    @classmethod
    def from_request(
        cls,
        request: Any,
        *,
        action: str,
        outcome: Outcome,
        principal: Principal | None = None,
        **fields: Any,
    ) -> AuditEvent:
        """The event for `request`: its caller's address and user agent, and who it was.

        `request` is a Starlette request or websocket, a Gradio `gr.Request` (which wraps
        one) or None (the CLI); `fields` are the remaining `AuditEvent` fields.
        """
        client_ip, user_agent = caller_of(request)
        if principal is not None:
            fields.setdefault("user_sub", principal.subject)
            fields.setdefault("user_email", principal.email)
        return cls(
            action=action,
            outcome=outcome,
            client_ip=client_ip,
            user_agent=user_agent,
            **fields,
        )


def caller_of(request: Any) -> tuple[str | None, str | None]:
    """The socket peer's address and the user agent of `request` (None, None without one).

    The address is the socket peer, never X-Forwarded-For: a proxy in front sets the peer
    through uvicorn's --forwarded-allow-ips, so a client cannot forge it.
    """
    # gr.Request wraps the Starlette request as `.request`; a Starlette request has none.
    raw = getattr(request, "request", None) or request
    if raw is None:
        return None, None
    client = getattr(raw, "client", None)
    headers = getattr(raw, "headers", None)
    agent = headers.get("user-agent") if headers is not None else None
    return getattr(client, "host", None), agent


def _text(value: Any, limit: int) -> str | None:
    # A value one backend refuses (NUL in PostgreSQL text, a lone surrogate in UTF-8) would
    # make its whole batch fail forever; clean it here, before it is hashed.
    if value is None:
        return None
    text = str(value)[:limit]
    if text.isascii() and "\x00" not in text:
        return text
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _number(value: Any, kind: type[int] | type[float]) -> Any:
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError):
        return kind(0)
    if kind is float:
        return number if math.isfinite(number) else 0.0  # SQLite stores NaN as NULL
    return max(INT_MIN, min(INT_MAX, number))  # the columns are 32-bit integers


def to_payload(event: AuditEvent, keep_prompt_text: bool) -> dict[str, Any]:
    """A self-contained copy of `event` as the writer stores and hashes it.

    Copying here means a caller mutating its event afterwards changes nothing; truncating
    here means every backend stores exactly what was hashed.
    """
    prompt = event.prompt_text
    digest = event.prompt_digest
    if digest is None and prompt is not None:
        digest = hashlib.sha256(str(prompt).encode("utf-8", "replace")).hexdigest()
    payload: dict[str, Any] = {
        name: _text(getattr(event, name), limit) for name, limit in LIMITS.items()
    }
    payload.update(
        event_id=uuid.uuid4().hex,
        created_at=format_time(datetime.now(UTC)),
        request_id=payload["request_id"] or "",
        action=payload["action"] or "unknown",
        outcome=payload["outcome"] or "error",
        prompt_digest=_text(digest, LIMITS["prompt_digest"]),
        status=_number(event.status, int),
        latency_ms=round(_number(event.latency_ms, float), 3),
        tokens_in=_number(event.tokens_in, int),
        tokens_out=_number(event.tokens_out, int),
        document_ids=[_text(d, 255) for d in event.document_ids or ()],
        flags=[_text(f, 255) for f in event.flags or ()],
        prompt_text=_text(prompt, PROMPT_MAX) if keep_prompt_text else None,
        detail=_text(event.detail, DETAIL_MAX),
    )
    return payload


class Auditor:
    """The audit log of one deployment: record events, query them, verify the chain."""

    def __init__(self, settings: Settings, database_url: str | None = None) -> None:
        self.settings = settings
        self.database_url = database_url or settings.resolved_database_url
        spool = Spool(settings.data_dir / "audit-spool")
        interval = settings.audit_flush_interval_ms / 1000.0
        self._writer = AuditWriter(self.database_url, spool, interval)
        self._closed = False
        atexit.register(self.close)  # a process that forgets stop() still loses nothing

    # --- writing -------------------------------------------------------------------------
    def record(self, event: AuditEvent) -> None:
        """Queue one event for the background writer. Never blocks on I/O, never raises."""
        try:
            self._writer.submit(to_payload(event, self.settings.audit_prompt_text))
        except Exception:  # auditing must never break the request it describes
            log.exception("audit event could not be queued: %r", event)

    async def start(self) -> None:
        """Start the background writer (also started by the first `record`)."""
        self._closed = False
        self._writer.start()

    async def stop(self) -> None:
        """Store (or spool) every queued event, then stop the writer."""
        await asyncio.to_thread(self.close)

    def flush(self) -> None:
        """Block until every event recorded so far is stored, or spooled if the DB is down."""
        if not self._writer.flush():
            log.error("audit flush timed out; events remain queued")

    def close(self) -> None:
        """Synchronous `stop` (CLI, atexit)."""
        if self._closed and not self._writer.queue:
            return
        self._closed = True
        self._writer.stop()

    def backlog(self) -> AuditBacklog:
        """Events queued and spooled, and the age of the oldest not yet stored (metrics)."""
        return self._writer.backlog()

    @property
    def spooled(self) -> int:
        """Events of this process waiting in the local spool for the database."""
        return self._writer.spool.own_count

    # --- reading -------------------------------------------------------------------------
    def query(self, filters: AuditFilters, page: int = 1, page_size: int = 50) -> AuditPage:
        """One page of events matching `filters`, newest first, with the total count."""
        return audit_query.query(self.database_url, filters, page, page_size)

    def requests_per_tenant_over_time(
        self, filters: AuditFilters, bucket: audit_query.Bucket = "hour"
    ) -> list[TimeBucketCount]:
        """Request counts per tenant per time bucket (minute, hour or day), oldest first."""
        return audit_query.requests_per_tenant_over_time(self.database_url, filters, bucket)

    def denied_and_rate_limited(self, filters: AuditFilters) -> list[OutcomeCount]:
        """Counts of `denied` and `rate_limited` events per tenant."""
        return audit_query.denied_and_rate_limited(self.database_url, filters)

    def tokens_per_tenant(self, filters: AuditFilters) -> list[TenantTokens]:
        """Prompt and completion tokens (and requests) per tenant."""
        return audit_query.tokens_per_tenant(self.database_url, filters)

    def export_csv(self, filters: AuditFilters) -> str:
        """Every event matching `filters` as CSV text (oldest first)."""
        return audit_query.export_csv(self.database_url, filters)

    def verify(self, expect_head: str | None = None) -> ChainReport:
        """Check the whole chain; `expect_head` (a head hash kept elsewhere) must be in it."""
        checker = ChainChecker(expect_head)
        table = AuditEventRow.__table__
        with get_engine(self.database_url).connect() as conn:
            result = conn.execution_options(yield_per=1000).execute(
                table.select().order_by(table.c.seq)
            )
            for row in result.mappings():
                if not checker.feed(row):
                    break
            result.close()
        return checker.report()
