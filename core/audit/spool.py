"""Local append-only spool for audit events the database could not take.

Each writer owns one JSON-lines file under `data_dir/audit-spool/`, holding an exclusive
`flock` on it while the process lives. Files whose lock can be taken belong to a process that
died: they are replayed too ("orphans"). Every append is fsync'ed before the batch counts as
safe. Replays are idempotent (the database skips event ids it already has), so a crash
between "inserted" and "spool truncated" cannot create duplicates.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

REJECTED_NAME = "rejected.ndjson"


def _read_lines(handle: IO[str], path: Path) -> list[dict[str, Any]]:
    handle.seek(0)
    events: list[dict[str, Any]] = []
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            # Only a write torn by a crash can do this; that event was never acknowledged.
            log.warning("audit spool %s: skipping unreadable line %d", path, number)
    return events


class Spool:
    """The spool directory of one writer: its own file plus orphans of dead processes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.jsonl"
        self._handle: IO[str] | None = None
        self._size = 0

    def append(self, events: Sequence[dict[str, Any]]) -> None:
        """Append events durably (raises OSError if the disk refuses)."""
        if self._handle is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            handle = self.path.open("a+", encoding="utf-8")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            self._handle = handle
        text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events)
        self._handle.write(text)
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._size += len(events)

    def reject(self, event: dict[str, Any], error: Exception) -> None:
        """Keep an event the database refuses as data (not an outage) out of the way.

        It goes to `rejected.ndjson` (never replayed automatically; not `*.jsonl`), so one
        bad row cannot hold back every later event, and still nothing is thrown away.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"error": f"{type(error).__name__}: {error}"[:1000], "event": event})
        with (self.directory / REJECTED_NAME).open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        log.error(
            "audit event %s refused by the database; kept in %s",
            event.get("event_id"),
            self.directory / REJECTED_NAME,
        )

    @property
    def own_count(self) -> int:
        """Events waiting in this writer's own file."""
        return self._size

    def orphans(self) -> list[Path]:
        """Spool files of other (possibly dead) writers, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.glob("*.jsonl") if p != self.path]
        return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))

    def read_own(self) -> list[dict[str, Any]]:
        """This writer's spooled events, in order."""
        if self._handle is None:
            return []
        return _read_lines(self._handle, self.path)

    def clear_own(self) -> None:
        """Forget this writer's spooled events (after they were replayed)."""
        if self._handle is not None:
            self._handle.truncate(0)
            self._handle.flush()
            os.fsync(self._handle.fileno())
        self._size = 0

    @contextmanager
    def claim_orphan(self, path: Path) -> Iterator[list[dict[str, Any]] | None]:
        """Lock an orphan file and yield its events (None if its owner is alive).

        The file is deleted when the block ends without an exception.
        """
        try:
            handle = path.open("r", encoding="utf-8")
        except FileNotFoundError:
            yield None
            return
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None  # a live writer owns it
                return
            yield _read_lines(handle, path)
            path.unlink(missing_ok=True)

    def close(self) -> None:
        """Release this writer's file; delete it when empty."""
        if self._handle is None:
            return
        if self._size == 0:
            self.path.unlink(missing_ok=True)
        self._handle.close()
        self._handle = None
