"""Auditing refused credentials without letting a flood of bad keys flood the audit log.

Every refusal is counted, but only the first `IMMEDIATE_ROWS` refusals per client address,
action and window (`Settings.refusal_audit_window_seconds`) become rows at once, with their
reason; the rest of that window becomes ONE row (`detail` says how many, flags `aggregated`
and `count=N`) when the window ends. A person who mistyped a key sees their refusal at once;
a script sending 10,000 bad keys a minute costs about six rows a minute instead of 10,000
hash-chained writes (issue 12, item 8). Every row carries client address and user agent
(item 9).

Windows are closed by the next refusal after they end, by a small background thread (so a
flood that stops is still written within a window), and at exit.
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from core.audit.auditor import AuditEvent

IMMEDIATE_ROWS = 5  # refusals per address and window written one by one, with their reason
MAX_SOURCES = 10_000  # addresses tracked at once; beyond that, windows are closed early
SWEEP_SECONDS = 1.0


class EventSink(Protocol):
    """What records audit events (core.audit.auditor.Auditor, or a test's recorder)."""

    def record(self, event: AuditEvent) -> None:
        """Queue one event."""


@dataclass
class _Window:
    started: float
    written: int = 0
    suppressed: int = 0
    user_agents: set[str] = field(default_factory=set)
    last_user_agent: str | None = None
    last_reason: str = ""


@dataclass(frozen=True)
class Refusal:
    """One refused credential, as the audit log describes it."""

    reason: str
    error_class: str
    client_ip: str | None
    user_agent: str | None
    action: str = "bearer_auth"
    status: int = 401


class RefusalLog:
    """Counts refusals per client address; writes a few rows per window, then one summary."""

    def __init__(
        self,
        sink: EventSink,
        window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Write to `sink`; one window per address lasts `window_seconds`."""
        self.sink = sink
        self.window_seconds = window_seconds
        self.clock = clock
        self._windows: dict[tuple[str, str], _Window] = {}  # (address, action) -> window
        self._lock = threading.Lock()
        self._sweeper: threading.Thread | None = None
        atexit.register(self.close)

    def refused(self, refusal: Refusal) -> None:
        """Count one refusal; write it now if it is among the first of its window."""
        key = (refusal.client_ip or "unknown", refusal.action)
        with self._lock:
            now = self.clock()
            self._close_windows(lambda w: now - w.started >= self.window_seconds)
            if len(self._windows) >= MAX_SOURCES:
                self._close_windows(lambda w: True)
            window = self._windows.setdefault(key, _Window(started=now))
            write_now = window.written < IMMEDIATE_ROWS
            if write_now:
                window.written += 1
            else:
                window.suppressed += 1
                window.last_reason = refusal.reason
                window.last_user_agent = refusal.user_agent
                if refusal.user_agent and len(window.user_agents) < 100:
                    window.user_agents.add(refusal.user_agent)
        if write_now:
            self.sink.record(self._event(refusal, refusal.reason, 1))
        self._ensure_sweeper()

    def flush(self) -> None:
        """Write the summary row of every window that has ended."""
        with self._lock:
            now = self.clock()
            self._close_windows(lambda w: now - w.started >= self.window_seconds)

    def close(self) -> None:
        """Write every pending summary now (shutdown)."""
        with self._lock:
            self._close_windows(lambda w: True)

    def _close_windows(self, ended: Callable[[_Window], bool]) -> None:
        # Called with the lock held; sink.record only queues, it never blocks.
        for key in [k for k, w in self._windows.items() if ended(w)]:
            window = self._windows.pop(key)
            if window.suppressed:
                self.sink.record(self._summary(key, window))

    def _summary(self, key: tuple[str, str], window: _Window) -> AuditEvent:
        source, action = key
        agents = len(window.user_agents)
        reason = (
            f"{window.suppressed} more refused credentials from this address within "
            f"{self.window_seconds:g} s of the first ({agents} user agent(s); last reason: "
            f"{window.last_reason})"
        )
        refusal = Refusal(
            reason=reason,
            error_class="NotAuthenticated",
            client_ip=None if source == "unknown" else source,
            user_agent=window.last_user_agent,
            action=action,
        )
        return self._event(refusal, reason, window.suppressed)

    @staticmethod
    def _event(refusal: Refusal, detail: str, count: int) -> AuditEvent:
        return AuditEvent(
            action=refusal.action,
            outcome="denied",
            status=refusal.status,
            client_ip=refusal.client_ip,
            user_agent=refusal.user_agent,
            error_class=refusal.error_class,
            detail=detail[:500],
            # Only summaries are flagged: a single refusal is an ordinary row (count 1).
            flags=["aggregated", f"count={count}"] if count > 1 else [],
        )

    def _ensure_sweeper(self) -> None:
        if self._sweeper is not None and self._sweeper.is_alive():
            return
        with self._lock:
            if self._sweeper is None or not self._sweeper.is_alive():
                self._sweeper = threading.Thread(
                    target=self._sweep, name="refusal-audit", daemon=True
                )
                self._sweeper.start()

    def _sweep(self) -> None:
        # Runs while windows are open; ends (and is restarted by the next refusal) when idle.
        while True:
            time.sleep(SWEEP_SECONDS)
            self.flush()
            with self._lock:
                if not self._windows:
                    self._sweeper = None
                    return
