"""The deliverer as the web app runs it: a background task, started and stopped by the
lifespan (core/server.py calls exactly `services.siem.start()` and `stop()`)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from core.audit.auditor import Auditor
from core.siem.deliverer import SiemRunner
from tests.siem.helpers import chat_event, siem_settings


async def _wait_for_lines(path: Path, count: int, deadline_s: float = 60) -> list[dict]:
    end = time.monotonic() + deadline_s
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count or time.monotonic() > end:
            return [json.loads(line) for line in lines]
        await asyncio.sleep(0.05)


async def test_background_task_delivers_and_judges_while_the_app_runs(
    tmp_path: Path, db_url: str
) -> None:
    out = tmp_path / "audit.jsonl"
    settings = siem_settings(
        tmp_path,
        db_url,
        siem_sinks=[f"file://{out}"],
        siem_poll_seconds=0.05,
        alerts_enabled=True,
        alert_injection="1/hour",
    )
    auditor = Auditor(settings)
    runner = SiemRunner(settings)
    runner.deliver_all(force=True)  # the cursors exist (the rules' at the head) before events
    await runner.start()
    try:
        for i in range(3):
            auditor.record(chat_event(i))
        auditor.record(chat_event(7, flags=["prompt_injection:role_override"]))
        # Four rows and the alert the rules wrote about the fourth, all while running.
        docs = await _wait_for_lines(out, 5)
    finally:
        await runner.stop()
        auditor.close()
    assert [d["event"]["action"] for d in docs] == ["chat"] * 4 + ["alert"]
    assert docs[-1]["tags"][0] == "alert:prompt_injection"
    assert runner._task is None  # stopped, sinks closed


async def test_start_does_nothing_when_delivery_is_not_in_the_app(
    tmp_path: Path, db_url: str
) -> None:
    settings = siem_settings(
        tmp_path, db_url, siem_sinks=["file:///tmp/x.jsonl"], siem_in_app=False
    )
    runner = SiemRunner(settings)
    await runner.start()
    assert runner._task is None
    await runner.stop()
