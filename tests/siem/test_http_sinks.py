"""Splunk HEC, Elasticsearch bulk and the alert webhook against real local HTTP receivers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from core.siem.deliverer import SiemRunner
from tests.fixtures.common import free_port
from tests.siem.helpers import chat_event, cursor_at, deliver, record, siem_settings
from tests.siem.receivers import HttpReceiver, Seen


def _hec_events(requests: list[Seen]) -> list[dict[str, Any]]:
    """Every event object of every HEC request (objects are concatenated, not a list)."""
    decoder, events = json.JSONDecoder(), []
    for seen in requests:
        text, position = seen.body.decode(), 0
        while position < len(text):
            obj, position = decoder.raw_decode(text, position)
            events.append(obj)
    return events


def test_splunk_hec_outage_and_refusal_lose_nothing(tmp_path: Path, db_url: str) -> None:
    answers = {"status": 200}
    receiver = HttpReceiver(free_port(), lambda s: (answers["status"], {"text": "x", "code": 0}))
    receiver.start()
    settings = siem_settings(
        tmp_path,
        db_url,
        siem_sinks=[f"splunk-hec+http://127.0.0.1:{receiver.port}#hec"],
        siem_splunk_token=SecretStr("hec-token-1"),
    )
    try:
        record(settings, [chat_event(i) for i in range(3)])
        deliver(settings)
        receiver.stop()  # the SIEM is down
        record(settings, [chat_event(i) for i in range(3, 6)])
        runner = SiemRunner(settings)
        assert runner.deliver_all(force=True)[0].error
        receiver.start()
        answers["status"] = 503  # up, but refusing (HEC: server busy)
        assert runner.deliver_all(force=True)[0].error
        assert cursor_at(db_url, "hec") == 3
        answers["status"] = 200
        assert runner.deliver_all(force=True)[0].delivered == 3
        runner.close()
        deliver(settings)  # restarted: nothing resent
    finally:
        receiver.stop()
    events = _hec_events(receiver.requests)
    assert [e["event"]["event"]["sequence"] for e in events] == [1, 2, 3, 4, 5, 6]
    assert {s.path for s in receiver.requests} == {"/services/collector/event"}
    assert {s.headers["authorization"] for s in receiver.requests} == {"Splunk hec-token-1"}
    assert events[0]["sourcetype"] == "tenantllm:audit" and isinstance(events[0]["time"], float)


class FakeBulkIndex:
    """An Elasticsearch-like `_bulk` endpoint storing documents by `_id` (create = once)."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []
        self.reject_next: set[int] = set()  # positions (in the next request) to answer 429
        self.seen: list[Seen] = []

    def __call__(self, seen: Seen) -> tuple[int, Any]:
        self.seen.append(seen)
        lines = seen.body.decode().splitlines()
        items = []
        for position in range(0, len(lines), 2):
            action, doc = json.loads(lines[position]), json.loads(lines[position + 1])
            _id = action["create"]["_id"]
            if position // 2 in self.reject_next:
                status = 429
            elif _id in self.docs:
                status = 409
            else:
                self.docs[_id] = doc
                self.order.append(_id)
                status = 201
            result = {"_index": action["create"]["_index"], "_id": _id, "status": status}
            if status == 429:
                result["error"] = {"type": "es_rejected_execution_exception", "reason": "busy"}
            items.append({"create": result})
        self.reject_next = set()
        return 200, {
            "took": 1,
            "errors": any(i["create"]["status"] >= 300 for i in items),
            "items": items,
        }


def test_elasticsearch_bulk_resumes_at_the_first_refused_item(tmp_path: Path, db_url: str) -> None:
    index = FakeBulkIndex()
    receiver = HttpReceiver(free_port(), index)
    receiver.start()
    settings = siem_settings(
        tmp_path,
        db_url,
        siem_sinks=[f"elasticsearch+http://127.0.0.1:{receiver.port}/audit-idx#es"],
        siem_elasticsearch_api_key=SecretStr("es-key"),
    )
    try:
        record(settings, [chat_event(i) for i in range(6)])
        index.reject_next = {3, 5}  # items 4 and 6 of the batch: 4 is the first refusal
        runner = SiemRunner(settings)
        [result] = runner.deliver_all(force=True)
        assert result.error and "took 3 of 6" in result.error
        assert cursor_at(db_url, "es") == 3
        # Rows 4-6 are sent again; row 5 was stored the first time (409 now: delivered).
        assert runner.deliver_all(force=True)[0].delivered == 3
        runner.close()
    finally:
        receiver.stop()
    sequences = [index.docs[i]["event"]["sequence"] for i in index.order]
    assert sorted(sequences) == [1, 2, 3, 4, 5, 6] and len(index.docs) == 6
    first = index.docs[index.order[0]]
    assert first["@timestamp"].endswith("Z") and first["event"]["action"] == "chat"
    assert first["user"]["id"] == "user-0" and first["labels"]["tenant"] == "sales"
    assert {s.path for s in index.seen} == {"/_bulk"}
    assert {s.headers["content-type"] for s in index.seen} == {"application/x-ndjson"}
    assert {s.headers["authorization"] for s in index.seen} == {"ApiKey es-key"}
    assert json.loads(index.seen[0].body.splitlines()[0])["create"]["_index"] == "audit-idx"


def test_elasticsearch_first_item_refused_is_a_failure(tmp_path: Path, db_url: str) -> None:
    index = FakeBulkIndex()
    receiver = HttpReceiver(free_port(), index)
    receiver.start()
    settings = siem_settings(
        tmp_path, db_url, siem_sinks=[f"elasticsearch+http://127.0.0.1:{receiver.port}#es"]
    )
    try:
        record(settings, [chat_event(1)])
        index.reject_next = {0}
        runner = SiemRunner(settings)
        [result] = runner.deliver_all(force=True)
        runner.close()
    finally:
        receiver.stop()
    assert result.error and "es_rejected_execution_exception" in result.error
    assert cursor_at(db_url, "es") == 0 and index.docs == {}
    assert "authorization" not in index.seen[0].headers  # no key configured


def test_webhook_gets_alert_rows_only(tmp_path: Path, db_url: str) -> None:
    receiver = HttpReceiver(free_port(), lambda s: (204, {}))
    receiver.start()
    settings = siem_settings(
        tmp_path,
        db_url,
        alerts_enabled=True,
        alert_injection="1/hour",
        alert_webhook_url=f"http://127.0.0.1:{receiver.port}/hook",
    )
    try:
        deliver(settings)  # a new webhook starts at the head: set up before the events
        record(settings, [chat_event(i) for i in range(4)])
        record(settings, [chat_event(9, flags=["prompt_injection:ignore_instructions"])])
        deliver(settings)
        deliver(settings)
    finally:
        receiver.stop()
    [posted] = receiver.requests
    [alert] = json.loads(posted.body)["alerts"]
    assert alert["event"]["kind"] == "alert" and "alert:prompt_injection" in alert["tags"]
    assert alert["labels"]["tenant"] == "sales"


def test_a_nonsense_answer_fails_that_sink_only(tmp_path: Path, db_url: str) -> None:
    hec = HttpReceiver(free_port(), lambda s: (200, ["not", "an", "object"]))
    es = HttpReceiver(free_port(), lambda s: (200, {"errors": True, "items": "garbage"}))
    hec.start()
    es.start()
    out = tmp_path / "audit.jsonl"
    settings = siem_settings(
        tmp_path,
        db_url,
        siem_sinks=[
            f"splunk-hec+http://127.0.0.1:{hec.port}#hec",
            f"elasticsearch+http://127.0.0.1:{es.port}#es",
            f"file://{out}#file",
        ],
        siem_splunk_token=SecretStr("t"),
    )
    try:
        record(settings, [chat_event(i) for i in range(2)])
        runner = SiemRunner(settings)
        hec_result, es_result, file_result = runner.deliver_all(force=True)
        runner.close()
    finally:
        hec.stop()
        es.stop()
    assert hec_result.error and "HTTP 200" in hec_result.error
    assert es_result.error and "AttributeError" in es_result.error  # a bug path, contained
    assert file_result.error is None and file_result.delivered == 2
    assert (cursor_at(db_url, "hec"), cursor_at(db_url, "es"), cursor_at(db_url, "file")) == (
        0,
        0,
        2,
    )
