"""How far behind each consumer of the audit log is (`tenantllm siem status`, Admin tab)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from core.siem import cursor
from core.siem.deliverer import SiemRunner


@dataclass(frozen=True)
class ConsumerStatus:
    """One consumer: its cursor, the log's head, the lag and the last failure."""

    name: str
    kind: str
    last_seq: int
    head_seq: int
    rows_behind: int
    seconds_behind: float
    delivered: int
    failures: int
    last_error: str | None
    last_error_at: datetime | None
    updated_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict (times as ISO 8601)."""
        data = asdict(self)
        for name in ("last_error_at", "updated_at"):
            data[name] = data[name].isoformat() if data[name] else None
        data["seconds_behind"] = round(self.seconds_behind, 3)
        return data


def consumer_statuses(runner: SiemRunner) -> list[ConsumerStatus]:
    """The status of every consumer `runner` runs (a consumer that never ran is at 0)."""
    statuses = []
    for deliverer in runner.deliverers:
        consumer = deliverer.consumer
        state = cursor.read_cursor(runner.url, consumer.name)
        last_seq = state.last_seq if state else 0
        lag = cursor.lag(runner.url, last_seq)
        statuses.append(
            ConsumerStatus(
                name=consumer.name,
                kind=consumer.kind,
                last_seq=last_seq,
                head_seq=lag.head_seq,
                rows_behind=lag.rows_behind,
                seconds_behind=lag.seconds_behind,
                delivered=state.delivered if state else 0,
                failures=state.failures if state else 0,
                last_error=state.last_error if state else None,
                last_error_at=state.last_error_at if state else None,
                updated_at=state.updated_at if state else None,
            )
        )
    return statuses


def summary_line(status: ConsumerStatus) -> str:
    """One line a person reads: name, kind, lag, last failure."""
    line = (
        f"{status.name} ({status.kind}): at seq {status.last_seq} of {status.head_seq}, "
        f"{status.rows_behind} rows / {status.seconds_behind:.0f} s behind"
    )
    if status.last_error:
        line += f"; {status.failures} failure(s), last: {status.last_error}"
    return line
