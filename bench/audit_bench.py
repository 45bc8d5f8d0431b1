"""Audit log throughput and request-path cost, on SQLite and PostgreSQL.

    .venv/bin/python bench/audit_bench.py [--events 20000] [--threads 8] [--no-postgres]

Sustained rate: N events recorded by T threads as fast as they can, until the writer has
stored all of them (`flush()` returned) -> events / elapsed seconds. Request path: the time
spent inside `Auditor.record()` for each call (p50/p99), which is all a request pays.
The chain is verified at the end (its speed is reported too), so the numbers are for
correct, complete writes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import pg_database
from core.audit.auditor import AuditEvent, Auditor
from core.config import Settings
from core.db import upgrade_database


def _event(n: int) -> AuditEvent:
    return AuditEvent(
        action="chat",
        outcome="ok",
        user_sub=f"user-{n % 50}",
        user_email=f"user{n % 50}@example.org",
        tenant_id=("sales", "finance", "development")[n % 3],
        request_id=uuid.uuid4().hex,
        latency_ms=123.4,
        tokens_in=200,
        tokens_out=80,
        document_ids=["d1", "d2", "d3"],
        client_ip="10.0.0.1",
        user_agent="Mozilla/5.0 bench",
        prompt_digest="0" * 64,
    )


def run(url: str, data_dir: Path, events: int, threads: int) -> dict[str, float]:
    """Record `events` from `threads` threads; measure the rate and time inside record()."""
    upgrade_database(url)
    auditor = Auditor(Settings(data_dir=data_dir, database_url=url))
    per = events // threads
    samples: list[list[int]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def work(index: int) -> None:
        mine = samples[index]
        prepared = [_event(index * per + i) for i in range(per)]
        barrier.wait()
        for ev in prepared:
            start = time.perf_counter_ns()
            auditor.record(ev)
            mine.append(time.perf_counter_ns() - start)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    recorded = time.perf_counter()
    auditor.flush()
    elapsed = time.perf_counter() - started
    verify_started = time.perf_counter()
    report = auditor.verify()
    verify_s = time.perf_counter() - verify_started
    auditor.close()
    assert report.ok and report.checked == per * threads, report.message
    latencies = sorted(x for s in samples for x in s)
    return {
        "events": per * threads,
        "events_per_s": round(per * threads / elapsed, 1),
        "record_phase_s": round(recorded - started, 3),
        "total_s": round(elapsed, 3),
        "record_p50_us": round(statistics.median(latencies) / 1000, 2),
        "record_p99_us": round(latencies[int(len(latencies) * 0.99)] / 1000, 2),
        "verify_events_per_s": round(report.checked / verify_s, 1),
    }


def main() -> None:
    """Run the benchmark and print one JSON object per backend."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        url = f"sqlite:///{base / 'bench.db'}"
        result = run(url, base / "sqlite", args.events, args.threads)
        print(json.dumps({"backend": "sqlite", **result}))
        if args.no_postgres:
            return
        with pg_database("tlm_bench") as url:
            result = run(url, base / "pg", args.events, args.threads)
            print(json.dumps({"backend": "postgresql", **result}))


if __name__ == "__main__":
    main()
