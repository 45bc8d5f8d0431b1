"""One running job's progress, written to its row as the file is parsed, embedded and stored.

The row is what every page (and a reloaded one) reads, so each step is written at once;
embedded batches are written at most every `_WRITE_EVERY` seconds (a batch of 64 chunks
takes a fraction of a second: a write per batch would be most of a small file's time).
Each write is also the worker's heartbeat (core/knowledge/ingest_worker.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from core.db import session_scope, utcnow
from core.knowledge import jobs
from core.knowledge.jobs import JobInfo

_WRITE_EVERY = 0.5  # seconds between two writes of embedded counts


class JobProgress:
    """The `IngestProgress` of one job: writes its row, tells `listener` (the CLI's bar)."""

    def __init__(
        self,
        db_url: str,
        tenant_id: str,
        job_id: str,
        listener: Callable[[JobInfo], None] | None = None,
    ) -> None:
        self._db_url = db_url
        self._tenant_id = tenant_id
        self._job_id = job_id
        self._listener = listener
        self._done = 0
        self._written_at = 0.0

    def parsed(self, parts: int) -> None:
        """The file is parsed; embedding comes next."""
        self._write(step="embedding", pages=parts)

    def embedding_started(self, chunks: int) -> None:
        """The number of chunks to embed is known."""
        self._write(chunks_expected=chunks, chunks_done=0)

    def embedded(self, chunks: int) -> None:
        """More chunks are embedded (written at most every half second)."""
        self._done += chunks
        if time.monotonic() - self._written_at >= _WRITE_EVERY:
            self._write(chunks_done=self._done)

    def storing(self, document_id: str) -> None:
        """Embedding is done; the chunks go to the stores under `document_id`."""
        self._write(step="storing", chunks_done=self._done, document_id=document_id)

    def _write(self, **values: Any) -> None:
        self._written_at = time.monotonic()
        with session_scope(self._db_url) as session:
            row = jobs.get_job(session, self._tenant_id, self._job_id)
            if row is None:
                return
            for key, value in values.items():
                setattr(row, key, value)
            row.heartbeat_at = utcnow()
            session.flush()
            info = jobs.job_info(row)
        if self._listener is not None:
            self._listener(info)
