"""Helpers of the SIEM tests: settings on a fresh database, writing and replaying audit rows."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from core.audit.auditor import AuditEvent, Auditor, to_payload
from core.audit.chain import format_time
from core.audit.writer import append_batch
from core.config import Settings
from core.siem import cursor
from core.siem.deliverer import SiemRunner


def siem_settings(tmp_path: Path, url: str, **values: Any) -> Settings:
    """Settings on `tmp_path` and database `url`; alerts off unless asked for."""
    values.setdefault("alerts_enabled", False)
    return Settings(data_dir=tmp_path, database_url=url, audit_flush_interval_ms=20, **values)


def chat_event(i: int, **fields: Any) -> AuditEvent:
    """An ordinary audited chat turn, numbered by its request id."""
    values: dict[str, Any] = {
        "action": "chat",
        "outcome": "ok",
        "user_sub": f"user-{i % 3}",
        "user_email": f"user{i % 3}@example.com",
        "tenant_id": ["sales", "finance", "development"][i % 3],
        "request_id": f"req-{i}",
        "client_ip": "10.1.2.3",
        "user_agent": "pytest",
        "latency_ms": 12.5,
        "tokens_in": 5,
        "tokens_out": 7,
    }
    values.update(fields)
    return AuditEvent(**values)


def record(settings: Settings, events: Iterable[AuditEvent]) -> None:
    """Store `events` through the real auditor (queue, writer, chain)."""
    auditor = Auditor(settings)
    for event in events:
        auditor.record(event)
    auditor.close()


def replay(url: str, timed: Iterable[tuple[datetime, AuditEvent]]) -> None:
    """Append events with the given creation times to the chain (a recorded sequence)."""
    payloads = []
    for moment, event in timed:
        payload = to_payload(event, keep_prompt_text=False)
        payload["created_at"] = format_time(moment)
        payloads.append(payload)
    append_batch(url, payloads)


def cursor_at(url: str, name: str) -> int:
    """Where the cursor `name` stands (0 when it never ran)."""
    state = cursor.read_cursor(url, name)
    return state.last_seq if state else 0


def deliver(settings: Settings) -> SiemRunner:
    """A fresh runner (a restarted deliverer) that ran one forced round; closed."""
    runner = SiemRunner(settings)
    try:
        runner.deliver_all(force=True)
    finally:
        runner.close()
    return runner
