"""Cursors on the real PostgreSQL: two deliverers of one sink (two replicas) at once."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.audit.query import AuditFilters, iter_records
from core.siem.deliverer import SiemRunner
from tests.audit_helpers import pg_database
from tests.siem.helpers import chat_event, cursor_at, record, siem_settings

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_url() -> Iterator[str]:
    with pg_database("tlm_siem") as url:
        yield url


def test_two_deliverers_of_one_sink_skip_nothing(tmp_path: Path, pg_url: str) -> None:
    out = tmp_path / "audit.jsonl"
    settings = siem_settings(
        tmp_path,
        pg_url,
        siem_sinks=[f"file://{out}#shared"],
        siem_batch_size=7,
        alerts_enabled=True,
        alert_denials="3/hour",
    )
    SiemRunner(settings).deliver_all(force=True)  # cursors exist before the events
    record(settings, [chat_event(i) for i in range(120)])
    record(settings, [chat_event(i, outcome="denied", status=403) for i in range(120, 126)])
    runners = [SiemRunner(settings), SiemRunner(settings)]
    errors: list[BaseException] = []

    def run(runner: SiemRunner) -> None:
        try:
            for _ in range(5):
                runner.deliver_all(force=True)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(r,)) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in runners:
        r.close()
    assert errors == []
    alerts = list(iter_records(pg_url, AuditFilters(action="alert")))
    # Both judged the denials; each window's alert is stored once: the principal ones (3
    # users: user-0..2, 2 denials each, below 3) none, the address one (6 denials) once.
    assert [a.flags[0] for a in alerts] == ["alert:repeated_denials"]
    head = 126 + len(alerts)
    seqs = [json.loads(line)["event"]["sequence"] for line in out.read_text().splitlines()]
    # At-least-once: a batch may go out twice, but every row is there, and in order per batch.
    assert set(seqs) == set(range(1, head + 1))
    assert cursor_at(pg_url, "shared") == head and cursor_at(pg_url, "alerts") == head
