"""Background indexing jobs: one SQL row per uploaded file, and where it stands.

An upload is queued here (one job per file, several files in one batch) and indexed by the
worker (core/knowledge/ingest_worker.py), which writes the job's progress as it goes: the
step (parsing, embedding, storing), pages parsed, chunks embedded of about how many. The rows
outlive the page and the process: a reloaded page reads them again, and after a restart the
worker resumes or fails what was left running. Every read a person can reach takes the tenant
id: there is no lookup of a job by id alone (only the worker claims across tenants).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import BigInteger, DateTime, Integer, String, Text, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.db import Base, utcnow

JobState = Literal["queued", "running", "indexed", "duplicate", "failed"]
ACTIVE_STATES = ("queued", "running")
#: The share of a file's work each step stands for, for the time left (embedding dominates).
_PARSED_SHARE, _EMBEDDED_SHARE = 0.1, 0.85


class IngestJobRow(Base):
    """One file queued for indexing in one tenant (created by migration 0010)."""

    __tablename__ = "ingest_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    batch_id: Mapped[str] = mapped_column(String(32))
    position: Mapped[int] = mapped_column(Integer)
    batch_size: Mapped[int] = mapped_column(Integer)
    filename: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    uploaded_by: Mapped[str] = mapped_column(String(255))
    requested_sub: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16))
    step: Mapped[str] = mapped_column(String(32))
    pages: Mapped[int] = mapped_column(Integer, default=0)
    chunks_done: Mapped[int] = mapped_column(Integer, default=0)
    chunks_expected: Mapped[int] = mapped_column(Integer, default=0)
    document_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


@dataclass(frozen=True)
class NewJob:
    """A file to queue: its display name, size, and (when refused on arrival) why."""

    id: str
    filename: str
    size: int
    error: str | None = None


@dataclass(frozen=True)
class JobInfo:
    """One job as a person sees it (no worker bookkeeping)."""

    id: str
    tenant_id: str
    batch_id: str
    position: int
    batch_size: int
    filename: str
    size: int
    uploaded_by: str
    state: str
    step: str
    pages: int
    chunks_done: int
    chunks_expected: int
    document_id: str | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def active(self) -> bool:
        """Queued or running: the page keeps polling while any job is."""
        return self.state in ACTIVE_STATES

    def fraction_done(self) -> float:
        """How much of this file's work is done, 0..1 (estimated while it runs)."""
        if not self.active:
            return 1.0
        if self.state == "queued":
            return 0.0
        if self.step == "storing":
            return _PARSED_SHARE + _EMBEDDED_SHARE
        embedded = self.chunks_done / self.chunks_expected if self.chunks_expected else 0.0
        parsed = _PARSED_SHARE if self.step == "embedding" else 0.0
        return parsed + _EMBEDDED_SHARE * min(1.0, embedded)


def aware(value: datetime | None) -> datetime | None:
    """`value` with its UTC zone (SQLite hands back naive datetimes, written in UTC)."""
    return value.replace(tzinfo=value.tzinfo or UTC) if value is not None else None


def job_info(row: IngestJobRow) -> JobInfo:
    """The listing record of a job row."""
    return JobInfo(
        id=row.id, tenant_id=row.tenant_id, batch_id=row.batch_id, position=row.position,
        batch_size=row.batch_size, filename=row.filename, size=row.size,
        uploaded_by=row.uploaded_by, state=row.state, step=row.step, pages=row.pages,
        chunks_done=row.chunks_done, chunks_expected=row.chunks_expected,
        document_id=row.document_id, error=row.error,
        created_at=aware(row.created_at) or utcnow(), started_at=aware(row.started_at),
        finished_at=aware(row.finished_at),
    )  # fmt: skip


def add_batch(
    session: Session,
    tenant_id: str,
    batch_id: str,
    files: Sequence[NewJob],
    uploaded_by: str,
    requested_sub: str,
) -> None:
    """One job per file, numbered 1..n in the batch; a file refused on arrival is `failed`."""
    now = utcnow()
    for position, new in enumerate(files, start=1):
        failed = new.error is not None
        session.add(
            IngestJobRow(
                id=new.id, tenant_id=tenant_id, batch_id=batch_id, position=position,
                batch_size=len(files), filename=new.filename[:255], size=new.size,
                uploaded_by=uploaded_by[:255], requested_sub=requested_sub[:255],
                state="failed" if failed else "queued", step="" if failed else "queued",
                pages=0, chunks_done=0, chunks_expected=0, error=new.error, attempts=0,
                created_at=now, finished_at=now if failed else None,
            )
        )  # fmt: skip


def list_jobs(session: Session, tenant_id: str, limit: int = 50) -> list[IngestJobRow]:
    """This tenant's most recent jobs, newest batch first, in batch order within a batch."""
    newest = (
        select(IngestJobRow.id)
        .where(IngestJobRow.tenant_id == tenant_id)
        .order_by(IngestJobRow.created_at.desc(), IngestJobRow.id)
        .limit(limit)
    )
    stmt = (
        select(IngestJobRow)
        .where(IngestJobRow.tenant_id == tenant_id, IngestJobRow.id.in_(newest))
        .order_by(IngestJobRow.created_at.desc(), IngestJobRow.batch_id, IngestJobRow.position)
    )
    return list(session.scalars(stmt))


def get_job(session: Session, tenant_id: str, job_id: str) -> IngestJobRow | None:
    """This tenant's job with this id (None if it is nobody's or another tenant's)."""
    stmt = select(IngestJobRow).where(
        IngestJobRow.tenant_id == tenant_id, IngestJobRow.id == job_id
    )
    return session.scalars(stmt).first()


def reserve(session: Session, job_ids: Sequence[str], worker: str) -> None:
    """Keep these queued jobs for `worker` (the CLI runs its own files in the foreground)."""
    session.execute(
        update(IngestJobRow)
        .where(IngestJobRow.id.in_(list(job_ids)), IngestJobRow.state == "queued")
        .values(worker=worker, heartbeat_at=utcnow())
    )


def claim(session: Session, job_id: str, worker: str) -> IngestJobRow | None:
    """Job `job_id`, now `running` for `worker`, if it was queued for nobody or for `worker`.

    Compare-and-set on the state: of two workers (replicas) that pick one row, one wins.
    """
    now = utcnow()
    claimed = session.execute(
        update(IngestJobRow)
        .where(IngestJobRow.id == job_id, IngestJobRow.state == "queued",
               (IngestJobRow.worker.is_(None)) | (IngestJobRow.worker == worker))
        .values(state="running", step="parsing", worker=worker, started_at=now,
                heartbeat_at=now, attempts=IngestJobRow.attempts + 1)
    )  # fmt: skip
    if getattr(claimed, "rowcount", 0) != 1:
        return None
    return session.get(IngestJobRow, job_id, populate_existing=True)


def claim_next(session: Session, worker: str) -> IngestJobRow | None:
    """The oldest job of any tenant queued for no one, now `running` for `worker`."""
    stmt = (
        select(IngestJobRow.id)
        .where(IngestJobRow.state == "queued", IngestJobRow.worker.is_(None))
        .order_by(IngestJobRow.created_at, IngestJobRow.position)
        .limit(5)
    )
    for job_id in session.scalars(stmt).all():
        row = claim(session, job_id, worker)
        if row is not None:
            return row
    return None


def stale(session: Session, before: datetime) -> list[IngestJobRow]:
    """Jobs held by a worker that has not written since `before` (its process stopped):
    running ones, and queued ones it had reserved."""
    stmt = select(IngestJobRow).where(
        IngestJobRow.state.in_(ACTIVE_STATES),
        IngestJobRow.worker.is_not(None),
        IngestJobRow.heartbeat_at < before,
    )
    return list(session.scalars(stmt))


@dataclass(frozen=True)
class BatchStatus:
    """Where one batch stands: file k of n, the file being indexed, about how long is left."""

    position: int  # the file being indexed (or the last one), from 1
    size: int
    current: JobInfo | None  # the running (else the next queued) job; None when all are done
    seconds_left: float | None  # None until something was measured


def batch_status(batch: Sequence[JobInfo], now: datetime) -> BatchStatus:
    """The status of one batch's jobs (all of the same batch).

    Time left: the batch's bytes done per second so far (a running file counts by its
    fraction done), applied to the bytes left. Files refused on arrival cost nothing.
    """
    ordered = sorted(batch, key=lambda j: j.position)
    current = next((j for j in ordered if j.state == "running"), None) or next(
        (j for j in ordered if j.state == "queued"), None
    )
    position = current.position if current else (ordered[-1].position if ordered else 0)
    work = [j for j in ordered if j.started_at is not None or j.active]
    total = sum(max(1, j.size) for j in work)
    done = sum(max(1, j.size) * j.fraction_done() for j in work)
    starts = [j.started_at for j in work if j.started_at is not None]
    elapsed = (now - min(starts)).total_seconds() if starts else 0.0
    left: float | None = None
    if current is None:
        left = 0.0
    elif done > 0 and elapsed >= 1.0:
        left = (total - done) / (done / elapsed)
    return BatchStatus(position, len(ordered), current, left)
