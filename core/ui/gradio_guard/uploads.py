"""Who may read which file of Gradio's upload folder, how many each person holds, and cleanup.

Gradio keeps every upload and every file output in ONE folder (`GRADIO_TEMP_DIR`) and serves
any file in it to any signed-in caller who names its path (`/gradio_api/file=`), and accepts
any of them as an input of any event (STACK_NOTES 1.5). The registry records which principal
each file was handed to (their upload, or an output sent to their session); the guard serves
and accepts a file only for those principals. Paths are content-addressed
(`<sha256>/<name>`), so two people who upload the same bytes under the same name share one
path: both own it, and neither learns anything they did not send.

An entry lives `ttl_seconds`: then its file is deleted (not indexed in time) and it no longer
counts towards the per-person cap. Indexed uploads are deleted by the Documents tab at once.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

SWEEP_INTERVAL = 1.0  # seconds between two cleanup passes


@dataclass
class _Entry:
    owners: dict[str, float] = field(default_factory=dict)  # subject -> when handed over
    uploaded_by: set[str] = field(default_factory=set)  # owners that uploaded it (count cap)


def real_path(path: str) -> str:
    """The canonical form of a path (symlinks and `..` resolved), as registry keys.

    A path the OS cannot take (a NUL byte) becomes "", which no one owns.
    """
    try:
        return os.path.realpath(path)
    except ValueError:
        return ""


class UploadRegistry:
    """Ownership of the files in one upload folder (thread-safe; in memory, per process)."""

    def __init__(
        self,
        folder: Callable[[], str],
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`folder` returns Gradio's upload folder (read when needed: set at app start)."""
        self._folder = folder
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._swept = -SWEEP_INTERVAL

    def now(self) -> float:
        """The registry's clock (seconds; grants age with it)."""
        return self._clock()

    def folder(self) -> str:
        """Gradio's upload folder, canonical."""
        return real_path(self._folder())

    def inside(self, path: str) -> bool:
        """Whether `path` is inside the upload folder (whether or not it exists)."""
        folder = self.folder()
        return real_path(path).startswith(folder.rstrip(os.sep) + os.sep)

    def grant(self, subject: str, paths: Iterable[str], uploaded: bool = False) -> None:
        """Let `subject` read and use these files (their upload, or their own output)."""
        now = self._clock()
        with self._lock:
            for path in paths:
                entry = self._entries.setdefault(real_path(path), _Entry())
                entry.owners[subject] = now
                if uploaded:
                    entry.uploaded_by.add(subject)

    def owns(self, subject: str, path: str) -> bool:
        """Whether `subject` was handed this file and it has not expired."""
        self.sweep()
        with self._lock:
            entry = self._entries.get(real_path(path))
            return entry is not None and subject in entry.owners

    def held(self, subject: str) -> list[float]:
        """When each upload `subject` still holds (not indexed, not expired) was made."""
        self.sweep()  # drops expired grants and files already indexed (deleted)
        with self._lock:
            return sorted(
                e.owners[subject] for e in self._entries.values() if subject in e.uploaded_by
            )

    def withdraw(self, subject: str, paths: Iterable[str]) -> None:
        """Undo `grant` for a refused upload; delete the files nobody else holds."""
        with self._lock:
            orphans = [p for p in map(real_path, paths) if self._drop(p, subject)]
        for path in orphans:
            delete_upload(path)

    def sweep(self) -> None:
        """Forget expired grants; delete files whose every grant expired or that are gone."""
        now = self._clock()
        limit = now - self.ttl_seconds
        with self._lock:
            if now - self._swept < SWEEP_INTERVAL:
                return  # one pass a second is plenty; each pass stats every file
            self._swept = now
            orphans = []
            for path, entry in list(self._entries.items()):
                for subject, granted in list(entry.owners.items()):
                    if granted < limit:
                        self._drop(path, subject)
                if path in self._entries and not os.path.exists(path):
                    del self._entries[path]  # indexed and deleted, or cleaned by Gradio
                elif path not in self._entries:
                    orphans.append(path)
        for path in orphans:
            delete_upload(path)

    def _drop(self, path: str, subject: str) -> bool:
        # Lock held. True when the file has no owner left (the caller deletes it).
        entry = self._entries.get(path)
        if entry is None:
            return False
        entry.owners.pop(subject, None)
        entry.uploaded_by.discard(subject)
        if entry.owners:
            return False
        del self._entries[path]
        return True


def delete_upload(path: str) -> None:
    """Delete one file of the upload folder, and its folder once empty.

    The registry's next sweep forgets a file that is gone (indexed uploads are deleted by the
    Documents tab this way, as soon as they are ingested).
    """
    # Gradio stores each file as <folder>/<sha256>/<name>: remove the file and its folder.
    Path(path).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty (another name, same bytes): leave it
        Path(path).parent.rmdir()
