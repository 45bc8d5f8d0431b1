"""The single background writer: batches audit events into the hash chain, or the spool.

One daemon thread per `Auditor`. Request code only appends to a deque (no lock, no I/O);
the thread wakes every flush interval, takes up to `BATCH_SIZE` events and appends them to
the chain in one transaction. Sequence numbers and prev-hashes are assigned inside that
transaction, after taking a database-wide lock (PostgreSQL: `pg_advisory_xact_lock`; SQLite:
`BEGIN IMMEDIATE`) and reading the current head, so several processes writing to one database
still build one unbroken chain. When the database fails, batches go to the spool and are
replayed, in order and before any newer batch, once it answers again.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Table, insert, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DataError, IntegrityError

from core.audit.chain import GENESIS_HASH, parse_time, payload_to_row
from core.audit.models import AuditEventRow
from core.audit.spool import Spool
from core.db import get_engine
from core.metrics import AuditBacklog

log = logging.getLogger(__name__)

BATCH_SIZE = 500
MAX_RETRY_SECONDS = 5.0
# Arbitrary constant naming "the audit chain" among advisory locks of this database.
ADVISORY_LOCK_KEY = 7_301_955_114_022_617
_table = cast(Table, AuditEventRow.__table__)


def _lock_chain(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
    elif conn.dialect.name == "sqlite":
        # Take the write lock before reading the head; the driver does not begin on its own
        # for a SELECT, so this is the transaction's first statement.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def append_batch(url: str, payloads: Sequence[dict[str, Any]]) -> int:
    """Append events to the chain in one transaction; skip event ids already stored.

    Returns how many rows were inserted. Raises SQLAlchemyError when the database fails
    (nothing of the batch is stored then).
    """
    ids = [p["event_id"] for p in payloads]
    with get_engine(url).connect() as conn:
        _lock_chain(conn)
        existing = set(conn.scalars(select(_table.c.event_id).where(_table.c.event_id.in_(ids))))
        head = conn.execute(
            select(_table.c.seq, _table.c.hash).order_by(_table.c.seq.desc()).limit(1)
        ).first()
        seq, prev = (int(head[0]), str(head[1])) if head else (0, GENESIS_HASH)
        rows = []
        for payload in payloads:
            if payload["event_id"] in existing:
                continue
            existing.add(payload["event_id"])
            seq += 1
            row = payload_to_row(payload, seq, prev)
            prev = row["hash"]
            rows.append(row)
        if rows:
            conn.execute(insert(_table), rows)
        conn.commit()
    return len(rows)


class _FlushMarker:
    """Put in the queue by `flush()`; set once everything before it is stored or spooled."""

    def __init__(self) -> None:
        self.done = threading.Event()


class AuditWriter:
    """Background thread that moves recorded events into the database (or the spool)."""

    def __init__(self, url: str, spool: Spool, interval_seconds: float) -> None:
        self.url = url
        self.spool = spool
        self.interval = interval_seconds
        self.queue: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._retry_at = 0.0  # while the database is failing, spool without trying it
        self._failures = 0
        self._orphans_checked = False
        self._spooled_since: float | None = None  # epoch of the oldest event in the spool

    def submit(self, payload: dict[str, Any]) -> None:
        """Queue one event (called on the request path: no I/O, no lock when running)."""
        self.queue.append(payload)
        if self._thread is None or not self._thread.is_alive():
            self.start()
        elif len(self.queue) >= BATCH_SIZE:
            self._wake.set()

    def backlog(self) -> AuditBacklog:
        """What waits for the database now (the metrics read it at scrape time; no I/O)."""
        oldest = self._spooled_since
        if oldest is None:
            try:
                first = self.queue[0]  # the writer thread may pop it meanwhile
                oldest = parse_time(first["created_at"]).timestamp()
            except (IndexError, TypeError, KeyError, ValueError):  # empty, or a flush marker
                oldest = None
        lag = max(0.0, time.time() - oldest) if oldest is not None else 0.0
        return AuditBacklog(len(self.queue), self.spool.own_count, lag)

    def start(self) -> None:
        """Start the thread (idempotent)."""
        with self._start_lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
            self._thread.start()

    def flush(self, timeout: float = 120.0) -> bool:
        """Wait until every event queued before now is stored or spooled; try a replay."""
        marker = _FlushMarker()
        self.queue.append(marker)
        self.start()
        self._wake.set()
        return marker.done.wait(timeout)

    def stop(self, timeout: float = 120.0) -> None:
        """Flush, then end the thread and release the spool file."""
        if self._thread is None and not self.queue:  # never used: nothing to do
            self.spool.close()
            return
        self.flush(timeout)
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.spool.close()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            try:
                self._drain()
            except Exception:  # the writer must survive anything; events stay queued
                log.exception("audit writer failed; retrying")
                time.sleep(min(self.interval * 5, 1.0))
            if self._stopping and not self.queue:
                return

    def _drain(self) -> None:
        while self.queue:
            batch: list[dict[str, Any]] = []
            marker: _FlushMarker | None = None
            while self.queue and len(batch) < BATCH_SIZE:
                item = self.queue.popleft()
                if isinstance(item, _FlushMarker):
                    marker = item
                    break
                batch.append(item)
            if batch:
                self._store(batch)
            if marker is not None:
                self._retry_at = 0.0  # a flush always tries the database again
                self._replay_spool(orphans=True)
                marker.done.set()
        self._spool_clear()  # replay after an outage even when no new event arrives

    def _spool_clear(self) -> bool:
        """True when nothing older than the next batch waits in the spool."""
        if self.spool.own_count == 0 and self._orphans_checked:
            return True
        return self._replay_spool(orphans=not self._orphans_checked)

    def _store(self, batch: list[dict[str, Any]]) -> None:
        # Spooled events are older: they must reach the chain before this batch does.
        if self._spool_clear():
            try:
                self._append(batch)
                self._failures = 0
                return
            except Exception as exc:  # database or driver failure: the spool keeps the batch
                self._database_failed(exc)
        try:
            self.spool.append(batch)
            if self._spooled_since is None:
                self._spooled_since = parse_time(batch[0]["created_at"]).timestamp()
        except OSError:
            log.exception("audit spool not writable; keeping %d events in memory", len(batch))
            self.queue.extendleft(reversed(batch))
            time.sleep(min(self.interval * 5, 1.0))

    def _append(self, events: list[dict[str, Any]]) -> None:
        """Append to the chain; events the database refuses as data are set aside one by one.

        Raises only for failures of the database itself (the caller spools then).
        """
        try:
            append_batch(self.url, events)
        except (DataError, IntegrityError):
            for payload in events:
                try:
                    append_batch(self.url, [payload])
                except (DataError, IntegrityError) as exc:
                    self.spool.reject(payload, exc)

    def _replay_spool(self, orphans: bool) -> bool:
        """Replay spooled events (and orphan files); True when none is left."""
        if time.monotonic() < self._retry_at:
            return False
        try:
            own = self.spool.read_own()
            for start in range(0, len(own), BATCH_SIZE):
                self._append(own[start : start + BATCH_SIZE])
            if own:
                log.warning("audit: replayed %d spooled events", len(own))
            self.spool.clear_own()
            self._spooled_since = None
            for path in self.spool.orphans() if orphans else []:
                with self.spool.claim_orphan(path) as events:
                    for start in range(0, len(events or []), BATCH_SIZE):
                        self._append((events or [])[start : start + BATCH_SIZE])
            self._orphans_checked = self._orphans_checked or orphans
            self._failures = 0
            return True
        except Exception as exc:  # database or driver failure: keep the spool, retry later
            self._database_failed(exc)
            return False

    def _database_failed(self, exc: Exception) -> None:
        self._failures += 1
        delay = min(self.interval * (2 ** min(self._failures, 10)), MAX_RETRY_SECONDS)
        self._retry_at = time.monotonic() + delay
        log.warning(
            "audit database unavailable (%s); spooling events, retry in %.1fs",
            type(exc).__name__,
            delay,
        )
