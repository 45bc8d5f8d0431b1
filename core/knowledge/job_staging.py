"""Where a queued upload's copy waits for its indexing job: beside the originals.

The copy is encrypted with the team's key (core/crypto.py, bound to the tenant and job) by
the caller. With the originals in the database (PostgreSQL: the scale-out default, see
core/knowledge/originals.py) the copy is a row of `ingest_staged`, so the worker of any
replica can run the job; with the originals on disk it is a file under the team's directory,
and only workers sharing that data dir can. Every call names the tenant id.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from sqlalchemy import DateTime, LargeBinary, String, delete, select
from sqlalchemy.orm import Mapped, mapped_column

from core.config import Settings
from core.db import Base, session_scope, utcnow
from core.knowledge.originals import backend_for


class StagedRow(Base):
    """The encrypted copy of one queued upload (created by migration 0012)."""

    __tablename__ = "ingest_staged"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    blob: Mapped[bytes] = mapped_column(LargeBinary)
    staged_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class StagedCopies:
    """The staged copies of this deployment: database rows or files, as the originals are."""

    def __init__(self, settings: Settings) -> None:
        self._db = settings.resolved_database_url
        self.shared = backend_for(settings) == "database"

    def put(self, tenant_id: str, tenant_dir: Path, job_id: str, blob: bytes) -> None:
        """Keep the copy of this job (whole or not at all)."""
        if self.shared:
            with session_scope(self._db) as session:
                session.merge(StagedRow(tenant_id=tenant_id, job_id=job_id, blob=blob,
                                        staged_at=utcnow()))  # fmt: skip
            return
        path = _path(tenant_dir, job_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, path)

    def get(self, tenant_id: str, tenant_dir: Path, job_id: str) -> bytes | None:
        """The copy of this job, None if it is not kept."""
        if self.shared:
            with session_scope(self._db) as session:
                blob = session.scalar(
                    select(StagedRow.blob).where(
                        StagedRow.tenant_id == tenant_id, StagedRow.job_id == job_id
                    )
                )
            return bytes(blob) if blob is not None else None
        path = _path(tenant_dir, job_id)
        return path.read_bytes() if path.exists() else None

    def exists(self, tenant_id: str, tenant_dir: Path, job_id: str) -> bool:
        """Whether the copy of this job is kept."""
        if self.shared:
            with session_scope(self._db) as session:
                stmt = select(StagedRow.job_id).where(
                    StagedRow.tenant_id == tenant_id, StagedRow.job_id == job_id
                )
                return session.scalar(stmt) is not None
        return _path(tenant_dir, job_id).exists()

    def delete(self, tenant_id: str, tenant_dir: Path, job_id: str) -> None:
        """Forget the copy of this job, if any."""
        if self.shared:
            with session_scope(self._db) as session:
                session.execute(
                    delete(StagedRow).where(
                        StagedRow.tenant_id == tenant_id, StagedRow.job_id == job_id
                    )
                )
            return
        _path(tenant_dir, job_id).unlink(missing_ok=True)


def _path(tenant_dir: Path, job_id: str) -> Path:
    return tenant_dir / "queue" / f"{job_id}.bin"
