"""Where a queued upload's copy waits for its indexing job: beside the originals.

The copy is encrypted with the team's key (core/crypto.py, bound to the tenant and job) by
the caller. With the originals in the database (PostgreSQL: the scale-out default, see
core/knowledge/originals.py) the copy is a row of `ingest_staged`, so the worker of any
replica can run the job; with the originals on disk it is a file under the team's directory,
and only workers sharing that data dir can. Every call names the tenant.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from sqlalchemy import ColumnElement, DateTime, LargeBinary, String, delete, select
from sqlalchemy.orm import Mapped, mapped_column

from core.config import Settings
from core.db import Base, session_scope, utcnow
from core.knowledge.originals import backend_for
from core.tenancy import Tenant


class StagedRow(Base):
    """The encrypted copy of one queued upload (created by migration 0012)."""

    __tablename__ = "ingest_staged"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    blob: Mapped[bytes] = mapped_column(LargeBinary)
    staged_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class StagedCopies:
    """The staged copies of this deployment: database rows or files, as the originals are."""

    def __init__(self, settings: Settings, tenant_dir: Callable[[Tenant], Path]) -> None:
        self._db = settings.resolved_database_url
        self._tenant_dir = tenant_dir  # where a team's files are (with the originals on disk)
        self.shared = backend_for(settings) == "database"

    def _file(self, tenant: Tenant, job_id: str) -> Path:
        return self._tenant_dir(tenant) / "queue" / f"{job_id}.bin"

    def put(self, tenant: Tenant, job_id: str, blob: bytes) -> None:
        """Keep the copy of this job (whole or not at all)."""
        if self.shared:
            with session_scope(self._db) as session:
                session.merge(StagedRow(tenant_id=tenant.id, job_id=job_id, blob=blob,
                                        staged_at=utcnow()))  # fmt: skip
            return
        path = self._file(tenant, job_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, path)

    def get(self, tenant: Tenant, job_id: str) -> bytes | None:
        """The copy of this job, None if it is not kept."""
        if self.shared:
            with session_scope(self._db) as session:
                blob = session.scalar(select(StagedRow.blob).where(*_keys(tenant, job_id)))
            return bytes(blob) if blob is not None else None
        path = self._file(tenant, job_id)
        return path.read_bytes() if path.exists() else None

    def exists(self, tenant: Tenant, job_id: str) -> bool:
        """Whether the copy of this job is kept."""
        if self.shared:
            with session_scope(self._db) as session:
                stmt = select(StagedRow.job_id).where(*_keys(tenant, job_id))
                return session.scalar(stmt) is not None
        return self._file(tenant, job_id).exists()

    def delete(self, tenant: Tenant, job_id: str) -> None:
        """Forget the copy of this job, if any."""
        if self.shared:
            with session_scope(self._db) as session:
                session.execute(delete(StagedRow).where(*_keys(tenant, job_id)))
            return
        self._file(tenant, job_id).unlink(missing_ok=True)


def _keys(tenant: Tenant, job_id: str) -> tuple[ColumnElement[bool], ...]:
    """The row of this team's job (every query names both)."""
    return StagedRow.tenant_id == tenant.id, StagedRow.job_id == job_id
