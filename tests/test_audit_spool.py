"""Database down: events are spooled locally, then replayed in order: none lost, none doubled."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from core.audit.auditor import AuditEvent, Auditor, to_payload
from core.audit.spool import Spool
from tests.audit_helpers import Load, event, scalar, settings_for, sqlite_url, wait_for


def lock_sqlite(path: Path) -> sqlite3.Connection:
    """Another connection holding the write lock: every audit write fails with 'locked'."""
    blocker = sqlite3.connect(path, isolation_level=None, timeout=30)
    blocker.execute("BEGIN IMMEDIATE")
    return blocker


def test_sqlite_locked_mid_load_spools_then_replays(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    auditor = Auditor(settings_for(tmp_path, url))
    load = Load(auditor)
    try:
        wait_for(lambda: scalar(url, "SELECT count(*) FROM audit_events") >= 40, "first rows")
        blocker = lock_sqlite(tmp_path / "audit.db")
        wait_for(lambda: auditor.spooled > 0, "events spooled")
        blocker.execute("COMMIT")
        blocker.close()
        wait_for(lambda: auditor.spooled == 0, "spool replayed while the load goes on")
    finally:
        total = load.finish()
    auditor.flush()
    assert auditor.spooled == 0
    assert scalar(url, "SELECT count(*) FROM audit_events") == total
    assert scalar(url, "SELECT count(DISTINCT request_id) FROM audit_events") == total
    report = auditor.verify()
    assert report.ok and report.checked == total, report.message
    auditor.close()
    assert list((tmp_path / "audit-spool").glob("*.jsonl")) == []


def test_shutdown_while_down_keeps_spool_for_next_start(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    first = Auditor(settings_for(tmp_path, url))
    first.record(event(0))
    first.flush()
    blocker = lock_sqlite(tmp_path / "audit.db")
    for n in range(1, 31):
        first.record(event(n))
    first.close()  # the database is still locked: the events stay in the spool file
    [left] = list((tmp_path / "audit-spool").glob("*.jsonl"))
    assert len(left.read_text().splitlines()) == 30
    blocker.execute("COMMIT")
    blocker.close()
    second = Auditor(settings_for(tmp_path, url))
    second.record(event(31))
    second.flush()
    assert scalar(url, "SELECT count(*) FROM audit_events") == 32
    # Spooled (older) events were chained before the newer one.
    assert scalar(url, "SELECT request_id FROM audit_events WHERE seq = 32") == "req-31"
    assert second.verify().ok
    second.close()
    assert list((tmp_path / "audit-spool").glob("*.jsonl")) == []


def test_orphan_spool_replayed_once_with_torn_line_and_duplicate(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    auditor = Auditor(settings_for(tmp_path, url))
    stored = to_payload(event(1), keep_prompt_text=False)
    payloads = [stored] + [to_payload(event(n), keep_prompt_text=False) for n in range(2, 12)]
    # The first event already reached the database before the process died.
    from core.audit.writer import append_batch

    assert append_batch(url, [stored]) == 1
    spool_dir = tmp_path / "audit-spool"
    spool_dir.mkdir()
    lines = "".join(json.dumps(p) + "\n" for p in payloads) + '{"event_id": "torn'
    (spool_dir / "12345-dead.jsonl").write_text(lines)
    auditor.flush()
    assert scalar(url, "SELECT count(*) FROM audit_events") == 11
    assert scalar(url, "SELECT count(DISTINCT event_id) FROM audit_events") == 11
    assert auditor.verify().ok
    assert not (spool_dir / "12345-dead.jsonl").exists()
    auditor.close()


def test_live_writers_spool_is_not_taken(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    live = Spool(tmp_path / "audit-spool")
    live.append([to_payload(AuditEvent(action="chat", outcome="ok"), keep_prompt_text=False)])
    auditor = Auditor(settings_for(tmp_path, url))
    auditor.flush()
    assert scalar(url, "SELECT count(*) FROM audit_events") == 0  # its owner replays it
    assert live.path.exists()
    live.close()
    auditor.flush()  # owner gone (lock released): now it is an orphan
    assert scalar(url, "SELECT count(*) FROM audit_events") == 1
    auditor.close()


def test_event_the_database_refuses_is_set_aside_not_blocking(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    auditor = Auditor(settings_for(tmp_path, url))
    bad = to_payload(event(2), keep_prompt_text=False)
    bad["action"] = None  # NOT NULL: refused as data, whatever we retry
    auditor.record(event(1))
    auditor._writer.submit(bad)  # bypasses record()'s cleaning on purpose
    auditor.record(event(3))
    auditor.flush()
    assert auditor.spooled == 0
    assert scalar(url, "SELECT count(*) FROM audit_events") == 2
    assert auditor.verify().ok
    [kept] = (tmp_path / "audit-spool" / "rejected.ndjson").read_text().splitlines()
    assert json.loads(kept)["event"]["event_id"] == bad["event_id"]
    auditor.record(event(4))  # later events still flow
    auditor.close()
    assert scalar(url, "SELECT count(*) FROM audit_events") == 3
