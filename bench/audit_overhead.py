"""Benchmark 5: the audit log on SQLite and PostgreSQL.

Two figures per backend, each beside a baseline taken in the same run:

* time spent in `Auditor.record()` on the request path (p50/p99), beside the floor of just
  appending a ready dict to a deque (what a no-op recorder would cost);
* sustained events/s: N events recorded back to back until `flush()` says all are stored,
  beside a bare SQLAlchemy `executemany` of the same rows (already hashed and chained, 500 per
  transaction, the writer's batch size) into an empty audit table of the same schema.

PostgreSQL runs in a dedicated schema (`search_path` in the URL) that is dropped at the end,
so nothing touches the tables other people's tests use in the `test` database.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, text

from bench.common import BenchContext, BenchResult, Table, ratio, summarize, target

PG_BASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BATCH = 500  # the writer's batch size (core/audit_writer.BATCH_SIZE)


def _event(i: int) -> Any:
    from core.audit.auditor import AuditEvent

    return AuditEvent(
        action="api_chat",
        outcome="ok",
        user_sub=f"key:bench{i % 50}",
        user_email="bench@example.com",
        tenant_id=("sales", "finance", "development")[i % 3],
        request_id=f"{i:032x}",
        status=200,
        latency_ms=123.456,
        tokens_in=120,
        tokens_out=64,
        document_ids=["doc-a", "doc-b"],
        client_ip="127.0.0.1",
        user_agent="bench/1.0",
        prompt_digest="ab" * 32,
    )


def _pg_url(schema: str) -> str:
    return f"{PG_BASE_URL}?options=-csearch_path%3D{schema}"


def _pg_schema(schema: str, create: bool) -> None:
    engine = create_engine(PG_BASE_URL)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        if create:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()


def _record_path(auditor: Any, n: int) -> list[float]:
    """Microseconds spent in each `record()` call, for `n` calls."""
    events = [_event(i) for i in range(n)]
    spent = []
    for event in events:
        t0 = time.perf_counter_ns()
        auditor.record(event)
        spent.append((time.perf_counter_ns() - t0) / 1000.0)
    return spent


def _deque_floor(n: int) -> list[float]:
    """Microseconds of a bare deque append of a ready dict: the floor for any recorder."""
    queue: collections.deque[dict[str, Any]] = collections.deque()
    payload = {"action": "api_chat"}
    spent = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        queue.append(payload)
        spent.append((time.perf_counter_ns() - t0) / 1000.0)
    return spent


def _ours(url: str, data_dir: Path, n: int) -> dict[str, Any]:
    """Record n events (timing each call), then wait for the writer to store them all."""
    from core.audit.auditor import Auditor
    from core.config import Settings
    from core.db import upgrade_database

    upgrade_database(url)
    auditor = Auditor(Settings(data_dir=data_dir), database_url=url)
    asyncio.run(auditor.start())
    for event in (_event(i) for i in range(200)):  # warm up connections and code paths
        auditor.record(event)
    auditor.flush()
    started = time.perf_counter()
    spent = _record_path(auditor, n)
    auditor.flush()
    elapsed = time.perf_counter() - started
    report = auditor.verify()
    auditor.close()
    return {
        "record_us": spent,
        "events_per_s": n / elapsed,
        "chain_ok": report.ok,
        "stored": report.checked,
    }


def _raw_rows(n: int) -> list[dict[str, Any]]:
    from core.audit.auditor import to_payload
    from core.audit.chain import GENESIS_HASH, payload_to_row

    rows, prev = [], GENESIS_HASH
    for i in range(n):
        row = payload_to_row(to_payload(_event(i), False), i + 1, prev)
        prev = row["hash"]
        rows.append(row)
    return rows


def _raw_insert(url: str, n: int) -> float:
    """Rows/s of a bare batched insert of ready rows (500 per transaction)."""
    from core.audit.models import AuditEventRow
    from core.db import upgrade_database

    upgrade_database(url)
    rows = _raw_rows(n)
    engine = create_engine(url)
    if url.startswith("sqlite"):
        with engine.begin() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    started = time.perf_counter()
    for i in range(0, n, BATCH):
        with engine.begin() as conn:
            conn.execute(insert(AuditEventRow), rows[i : i + BATCH])
    elapsed = time.perf_counter() - started
    engine.dispose()
    return n / elapsed


def _backend(name: str, ours_url: str, raw_url: str, data_dir: Path, n: int) -> dict[str, Any]:
    ours = _ours(ours_url, data_dir, n)
    raw_rate = _raw_insert(raw_url, n)
    rec = summarize(ours["record_us"])
    return {
        "backend": name,
        "events": n,
        "events_per_s": ours["events_per_s"],
        "raw_insert_rows_per_s": raw_rate,
        "ratio_vs_raw_insert": ratio(ours["events_per_s"], raw_rate),
        "record_p50_us": rec["p50"],
        "record_p99_us": rec["p99"],
        "record_mean_us": rec["mean"],
        "chain_ok": ours["chain_ok"],
        "stored": ours["stored"],
    }


def run(ctx: BenchContext) -> BenchResult:
    """Audit throughput and request-path cost on SQLite and PostgreSQL."""
    result = BenchResult("audit", "5. Audit log")
    n = ctx.scale(20_000, 2_000)
    work = ctx.subdir("audit")
    rows = [
        _backend(
            "sqlite",
            f"sqlite:///{work / 'ours.db'}",
            f"sqlite:///{work / 'raw.db'}",
            work / "sqlite-data",
            n,
        )
    ]
    schema = f"bench_audit_{os.getpid()}"
    try:
        _pg_schema(schema, create=True)
        _pg_schema(schema + "_raw", create=True)
        rows.append(
            _backend("postgresql", _pg_url(schema), _pg_url(schema + "_raw"), work / "pg-data", n)
        )
    except Exception as exc:  # report the failure, keep the SQLite figures
        result.notes.append(f"PostgreSQL run failed: {type(exc).__name__}: {exc}")
    finally:
        from core.db import dispose_engines

        dispose_engines()
        for name in (schema, schema + "_raw"):
            try:
                _pg_schema(name, create=False)
            except Exception as exc:
                result.notes.append(f"could not drop schema {name}: {exc}")
    floor = summarize(_deque_floor(n))
    result.data = {
        "backends": rows,
        "deque_append_p50_us": floor["p50"],
        "deque_append_p99_us": floor["p99"],
    }
    result.tables.append(
        Table(
            f"{n:,} events recorded back to back; throughput = until flush() returns (all stored)",
            [
                "backend",
                "events/s (ours)",
                "raw batched insert rows/s",
                "ours / raw",
                "record() p50 µs",
                "record() p99 µs",
                "deque.append p50 µs",
                "chain verified",
            ],
            [
                [
                    r["backend"],
                    r["events_per_s"],
                    r["raw_insert_rows_per_s"],
                    r["ratio_vs_raw_insert"],
                    r["record_p50_us"],
                    r["record_p99_us"],
                    floor["p50"],
                    r["chain_ok"],
                ]
                for r in rows
            ],
        )
    )
    for r in rows:
        result.targets.append(
            target(
                f"audit events/s batched ({r['backend']})",
                r["events_per_s"],
                "events/s",
                ">=",
                5000,
            )
        )
        result.targets.append(
            target(
                f"audit record() p50 in request path ({r['backend']})",
                r["record_p50_us"] / 1000.0,
                "ms",
                "<=",
                0.2,
            )
        )
    return result
