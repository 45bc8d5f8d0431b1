"""Helpers shared by the audit tests: fresh PostgreSQL databases, bulk recording, raw SQL."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import text

from core.audit.auditor import AuditEvent, Auditor
from core.config import Settings
from core.db import dispose_engines, get_engine, upgrade_database

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
REPO = Path(__file__).resolve().parents[1]


@contextmanager
def pg_database(prefix: str = "tlm_audit") -> Iterator[str]:
    """A fresh PostgreSQL database at the newest migration, dropped afterwards.

    Fails (does not skip) when PostgreSQL is not running: CI must run these tests.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        upgrade_database(url)
        yield url
    finally:
        dispose_engines()
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite database at the newest migration."""
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    upgrade_database(url)
    return url


@contextmanager
def fresh_database(kind: str, tmp_path: Path) -> Iterator[str]:
    """A new database at the newest migration: a SQLite file (`sqlite`) or PostgreSQL."""
    if kind == "sqlite":
        yield sqlite_url(tmp_path)
        return
    with pg_database("tlm_t") as url:
        yield url


def settings_for(tmp_path: Path, url: str, **overrides: Any) -> Settings:
    """Settings on `tmp_path` with the given database and a short flush interval."""
    values: dict[str, Any] = {"data_dir": tmp_path, "database_url": url}
    values.setdefault("audit_flush_interval_ms", 20)
    values.update(overrides)
    return Settings(**values)


def event(n: int, tenant: str = "sales", **fields: Any) -> AuditEvent:
    """A distinct chat event numbered `n`."""
    values: dict[str, Any] = {
        "action": "chat",
        "outcome": "ok",
        "user_sub": f"user-{n % 7}",
        "user_email": f"user{n % 7}@example.org",
        "tenant_id": tenant,
        "request_id": f"req-{n}",
        "latency_ms": n / 3,
        "tokens_in": n,
        "tokens_out": 2 * n,
        "document_ids": [f"doc-{n}"],
    }
    values.update(fields)
    return AuditEvent(**values)


def record_concurrently(auditor: Auditor, total: int, threads: int = 25) -> None:
    """`total` record() calls spread over `threads` threads started together."""
    barrier = threading.Barrier(threads)
    per = total // threads

    def work(index: int) -> None:
        barrier.wait()
        for i in range(per):
            n = index * per + i
            auditor.record(event(n, tenant=("sales", "finance", "development")[n % 3]))

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def scalar(url: str, sql: str, **params: Any) -> Any:
    """Run one SQL statement (committed) and return its first column, if any."""
    with get_engine(url).begin() as conn:
        result = conn.execute(text(sql), params)
        return result.scalar() if result.returns_rows else None


def run_writer_process(data_dir: Path, url: str, count: int, label: str) -> subprocess.Popen[str]:
    """Another app process recording `count` events into the same database."""
    code = (
        "import sys\n"
        "from core.config import Settings\n"
        "from core.audit.auditor import Auditor, AuditEvent\n"
        f"a = Auditor(Settings(data_dir={str(data_dir)!r}, database_url={url!r},"
        " audit_flush_interval_ms=10))\n"
        f"for i in range({count}):\n"
        f"    a.record(AuditEvent(action='chat', outcome='ok', tenant_id='sales',"
        f" request_id='{label}-%d' % i))\n"
        "a.close()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, env=env, text=True, stderr=subprocess.PIPE
    )


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    """Poll until `condition()` holds (a guard against hanging, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


class Load:
    """Records events from 4 threads at a steady pace until stopped; counts what it recorded."""

    def __init__(self, auditor: Auditor) -> None:
        self.auditor = auditor
        self.stop = threading.Event()
        self.counts = [0, 0, 0, 0]
        self.threads = [threading.Thread(target=self._work, args=(i,)) for i in range(4)]
        for thread in self.threads:
            thread.start()

    def _work(self, index: int) -> None:
        while not self.stop.is_set():
            self.auditor.record(event(index * 1_000_000 + self.counts[index]))
            self.counts[index] += 1
            time.sleep(0.002)

    def finish(self) -> int:
        """Stop recording; the number of events recorded."""
        self.stop.set()
        for thread in self.threads:
            thread.join()
        return sum(self.counts)


def hostile_events() -> list[AuditEvent]:
    """Values a backend might refuse; each must be stored (cleaned) without blocking the log."""
    return [
        AuditEvent(action="chat", outcome="ok", latency_ms=float("nan"), tokens_in=10**30),
        AuditEvent(action="chat", outcome="ok", latency_ms=float("inf"), tokens_out=-(10**20)),
        AuditEvent(action="chat", outcome="ok", user_agent="bad\x00agent", detail="a\x00b"),
        AuditEvent(action="chat", outcome="ok", user_sub="\ud800lone", flags=["x\udfff"]),
        AuditEvent(action="ch\x00at", outcome="ok", document_ids=["d" * 1000]),
    ]


async def refused_http_burst(settings: Settings, total: int) -> Auditor:
    """`total` concurrent unauthenticated chat calls through the real app (each refused, 401,
    and audited by the API layer); returns the app's auditor, flushed."""
    import asyncio

    import httpx

    from core.server import create_app
    from core.services import build_services

    services = build_services(settings)
    app = create_app(settings, services)
    body = {"model": "sales", "messages": [{"role": "user", "content": "hi"}]}

    async def call(i: int) -> httpx.Response:
        # One client address each: refusals from ONE address are aggregated (core/refusals.py),
        # and this is about the writer losing nothing under concurrency.
        address = (f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}", 40000)
        transport = httpx.ASGITransport(app=app, client=address)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            return await c.post(
                "/v1/chat/completions", json=body, headers={"user-agent": f"burst-{i}"}
            )

    responses = await asyncio.gather(*(call(i) for i in range(total)))
    assert {r.status_code for r in responses} == {401}
    await asyncio.to_thread(services.auditor.flush)
    return services.auditor


def racing_appends(url: str, writers: int = 4, batches: int = 60) -> list[str]:
    """Several writers appending batches to one chain at once (as separate app processes
    would); returns the errors they met. Without the chain lock they collide on `seq`."""
    from core.audit.auditor import to_payload
    from core.audit.writer import append_batch

    errors: list[str] = []
    barrier = threading.Barrier(writers)

    def work() -> None:
        barrier.wait()
        for _ in range(batches):
            batch = [to_payload(event(i), keep_prompt_text=False) for i in range(5)]
            try:
                append_batch(url, batch)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}"[:200])

    threads = [threading.Thread(target=work) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors
