"""The JSON-lines file sink on a real SQLite audit log: once per row, in order, no loss."""

from __future__ import annotations

import json
from pathlib import Path

from core.siem.deliverer import SiemRunner
from core.siem.status import consumer_statuses
from tests.siem.helpers import chat_event, cursor_at, deliver, record, siem_settings


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_row_once_in_order_across_restarts(tmp_path: Path, db_url: str) -> None:
    out = tmp_path / "siem" / "audit.jsonl"
    settings = siem_settings(tmp_path, db_url, siem_sinks=[f"file://{out}#file"])
    record(settings, [chat_event(i) for i in range(10)])
    deliver(settings)
    assert [d["event"]["sequence"] for d in _lines(out)] == list(range(1, 11))
    deliver(settings)  # a restarted deliverer: nothing before its cursor again
    assert len(_lines(out)) == 10
    record(settings, [chat_event(i) for i in range(10, 15)])
    deliver(settings)
    assert [d["event"]["sequence"] for d in _lines(out)] == list(range(1, 16))
    assert cursor_at(db_url, "file") == 15
    assert out.stat().st_mode & 0o777 == 0o600


def test_document_has_ecs_fields_and_no_prompt_text(tmp_path: Path, db_url: str) -> None:
    out = tmp_path / "audit.jsonl"
    settings = siem_settings(tmp_path, db_url, siem_sinks=[f"file://{out}"])
    record(settings, [chat_event(1, prompt_text="the secret plan", flags=["x"])])
    deliver(settings)
    [doc] = _lines(out)
    assert doc["event"]["action"] == "chat" and doc["event"]["outcome"] == "success"
    assert doc["event"]["duration"] == 12_500_000  # 12.5 ms in nanoseconds
    assert doc["user"] == {"id": "user-1", "email": "user1@example.com"}
    assert doc["source"]["ip"] == "10.1.2.3"
    assert doc["user_agent"]["original"] == "pytest"
    assert doc["labels"] == {"tenant": "finance", "outcome": "ok"}
    assert doc["tags"] == ["x"] and doc["http"]["request"]["id"] == "req-1"
    assert doc["@timestamp"].endswith("Z")
    # The row keeps a digest only (audit_prompt_text is off), so the sink sends no text.
    assert "prompt_text" not in doc["tenantllm"] and doc["tenantllm"]["prompt_digest"]
    assert "the secret plan" not in out.read_text()


def test_prompt_text_is_sent_when_the_row_stores_it(tmp_path: Path, db_url: str) -> None:
    out = tmp_path / "audit.jsonl"
    settings = siem_settings(tmp_path, db_url, siem_sinks=[f"file://{out}"], audit_prompt_text=True)
    record(settings, [chat_event(1, prompt_text="what is the Q3 forecast?")])
    deliver(settings)
    assert _lines(out)[0]["tenantllm"]["prompt_text"] == "what is the Q3 forecast?"


def test_a_peer_address_that_is_no_ip_goes_to_source_address(tmp_path: Path, db_url: str) -> None:
    out = tmp_path / "audit.jsonl"
    settings = siem_settings(tmp_path, db_url, siem_sinks=[f"file://{out}"])
    record(settings, [chat_event(1, client_ip="testclient")])
    deliver(settings)
    assert _lines(out)[0]["source"] == {"address": "testclient"}


def test_unwritable_file_keeps_the_cursor_and_shows_the_lag(tmp_path: Path, db_url: str) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the sink's directory should be")
    out = blocker / "audit.jsonl"
    settings = siem_settings(tmp_path, db_url, siem_sinks=[f"file://{out}#f"])
    record(settings, [chat_event(i) for i in range(4)])
    runner = SiemRunner(settings)
    [result] = runner.deliver_all(force=True)
    assert result.error and result.delivered == 0
    [status] = consumer_statuses(runner)
    assert (status.last_seq, status.rows_behind, status.failures) == (0, 4, 1)
    assert status.seconds_behind >= 0 and "Error" in (status.last_error or "")
    # Backing off: an unforced round does not even try.
    assert runner.deliver_all()[0].skipped
    blocker.unlink()
    [result] = runner.deliver_all(force=True)
    assert result.error is None and result.delivered == 4
    [status] = consumer_statuses(runner)
    assert (status.rows_behind, status.failures, status.last_error) == (0, 0, None)
    assert [d["event"]["sequence"] for d in _lines(out)] == [1, 2, 3, 4]
