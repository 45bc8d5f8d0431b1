"""Gradio session hashes bound to the principal that first used them.

A Gradio session hash is chosen by the browser and is, to Gradio, a bearer capability: with
it, `/gradio_api/queue/data` streams that session's answers, `/heartbeat/<hash>` ends its
session when the connection drops, `/cancel` stops its events (STACK_NOTES 1.3). The guard
binds each hash to the subject of its first request and refuses it to everyone else, so a
hash seen in a screenshot, a log or a shared link is worth nothing to another person.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

IDLE_SECONDS = 24 * 3600  # a binding unused this long is forgotten (Gradio's state is long gone)
MAX_BINDINGS = 200_000  # beyond this, the bindings idle longest are forgotten first


class SessionBindings:
    """session hash -> subject, first use wins (thread-safe; in memory, per process)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """Bindings age with `clock` (seconds)."""
        self._clock = clock
        self._bound: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def claim(self, session_hash: str, subject: str) -> bool:
        """Bind `session_hash` to `subject` if it is free; whether `subject` may use it."""
        now = self._clock()
        with self._lock:
            bound = self._bound.get(session_hash)
            if bound is not None and bound[0] != subject and now - bound[1] < IDLE_SECONDS:
                return False
            self._bound.pop(session_hash, None)  # re-insert: dicts keep insertion order
            self._bound[session_hash] = (subject, now)
            if len(self._bound) > MAX_BINDINGS:
                self._forget_oldest(now)
            return True

    def owner(self, session_hash: str) -> str | None:
        """The subject `session_hash` is bound to, if any."""
        with self._lock:
            bound = self._bound.get(session_hash)
            return bound[0] if bound else None

    def _forget_oldest(self, now: float) -> None:
        # Lock held. The dict is in last-use order: drop idle ones, then the oldest tenth.
        stale = [h for h, (_, used) in self._bound.items() if now - used >= IDLE_SECONDS]
        for session_hash in stale or list(self._bound)[: MAX_BINDINGS // 10]:
            del self._bound[session_hash]
