"""The background indexing of uploads: queue one job per file, and the worker that runs them.

`IngestJobs.enqueue` checks each file (cheap checks, core/knowledge/uploads.py), keeps a copy
encrypted with the team's key where the originals are kept (core/knowledge/job_staging.py: in
the database with PostgreSQL, so any replica's worker can run the job), and writes one job row
per file (core/knowledge/jobs.py); a file refused on arrival is a failed job that says why.
The worker, one thread in the app process, claims queued jobs (any team's, oldest first) and
indexes each through `KnowledgeService.ingest`, which stores a file completely or not at all;
the job's row follows its progress (core/knowledge/job_progress.py) and ends `indexed`,
`duplicate` or `failed` with the reason, audited as `ingest_job`.

After a restart, jobs left by a stopped process are found (`recover`): by its process id when
it ran on this host, else by a heartbeat older than `ingest_job_stale_seconds`. What it may
have stored half is removed, and the job is queued again (at most `MAX_ATTEMPTS` runs, and
only while its copy is kept) or failed with the reason.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from core import crypto
from core.audit.auditor import AuditEvent, Auditor
from core.config import Settings
from core.db import session_scope, utcnow
from core.errors import IngestionError, TenantLLMError
from core.knowledge import jobs
from core.knowledge.documents import IngestOutcome
from core.knowledge.job_progress import JobProgress
from core.knowledge.job_staging import StagedCopies
from core.knowledge.jobs import IngestJobRow, JobInfo, NewJob
from core.knowledge.service import KnowledgeService
from core.knowledge.uploads import check_upload, clean_filename
from core.tenancy import Tenant

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 2
ACTOR_ACTION = "ingest_job"
SERVER_FAILURE = "Indexing failed on the server's side (it has been logged); upload it again."


class IngestJobs:
    """Every team's indexing jobs in this process: queue, run, recover, list."""

    def __init__(self, settings: Settings, knowledge: KnowledgeService, auditor: Auditor) -> None:
        self._settings = settings
        self._db = settings.resolved_database_url
        self._knowledge = knowledge
        self._auditor = auditor
        self._master = crypto.master_key(settings)
        self._staged = StagedCopies(settings, knowledge.tenant_dir)
        self._host, self._token = socket.gethostname()[:64], uuid.uuid4().hex[:12]
        self.worker_id = f"{self._host}:{os.getpid()}:{self._token}"
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- queueing ---------------------------------------------------------------------------
    def enqueue(
        self,
        tenant: Tenant,
        files: Sequence[Path],
        names: Sequence[str],
        uploaded_by: str,
        requested_sub: str,
        *,
        keep_for_me: bool = False,
    ) -> list[JobInfo]:
        """Queue each file as one job of one batch; the jobs, in order.

        `keep_for_me`: the jobs are reserved for this process's `run_job` (the CLI's
        foreground run), not for the app's worker.
        """
        tenant = self._knowledge.tenants.get(tenant.id)
        if len(files) != len(names):
            raise IngestionError("Each file needs exactly one name.")
        batch_id = uuid.uuid4().hex
        queued = [
            self._stage(tenant, Path(path), name) for path, name in zip(files, names, strict=True)
        ]
        with session_scope(self._db) as session:
            jobs.add_batch(session, tenant.id, batch_id, queued, uploaded_by, requested_sub)
            if keep_for_me:
                jobs.reserve(session, [q.id for q in queued if q.error is None], self.worker_id)
        for new in queued:
            if new.error is not None:
                self._audit_refused(tenant, new, requested_sub)
        self._wake.set()
        return [j for j in self.list_jobs(tenant) if j.batch_id == batch_id]

    def list_jobs(self, tenant: Tenant, limit: int = 50) -> list[JobInfo]:
        """The tenant's most recent jobs (newest batch first)."""
        with session_scope(self._db) as session:
            return [jobs.job_info(r) for r in jobs.list_jobs(session, tenant.id, limit)]

    def _stage(self, tenant: Tenant, path: Path, name: str) -> NewJob:
        job_id = uuid.uuid4().hex
        try:
            max_bytes = self._settings.max_upload_mb * 1024 * 1024
            checked = check_upload(path, name, max_bytes, self._settings.max_document_chars)
        except IngestionError as exc:
            return NewJob(job_id, _display_name(name), _size_of(path), error=exc.message)
        except OSError as exc:
            error = f"{name}: the file could not be read ({exc.strerror or exc})."
            return NewJob(job_id, _display_name(name), 0, error=error)
        key = crypto.tenant_key(self._master, tenant.id)
        blob = crypto.encrypt(key, tenant.id, _aad(job_id), checked.data)
        self._staged.put(tenant, job_id, blob)
        return NewJob(job_id, checked.name, len(checked.data))

    # --- running ----------------------------------------------------------------------------
    def run_job(
        self, tenant: Tenant, job_id: str, listener: Callable[[JobInfo], None] | None = None
    ) -> JobInfo | None:
        """Run one queued job of `tenant` here and now (None if it was not queued)."""
        with session_scope(self._db) as session:
            row = jobs.get_job(session, tenant.id, job_id)
            claimed = jobs.claim(session, job_id, self.worker_id) if row is not None else None
            info = jobs.job_info(claimed) if claimed is not None else None
        return self._run(info, listener) if info is not None else None

    def run_pending(self) -> int:
        """Run queued jobs until none is left (the worker's loop body); how many ran."""
        ran = 0
        while not self._stop.is_set():
            with session_scope(self._db) as session:
                row = jobs.claim_next(session, self.worker_id)
                info = jobs.job_info(row) if row is not None else None
            if info is None:
                return ran
            self._run(info, None)
            ran += 1
        return ran

    def _run(self, job: JobInfo, listener: Callable[[JobInfo], None] | None) -> JobInfo:
        progress = JobProgress(self._db, job.tenant_id, job.id, listener)
        try:
            tenant = self._knowledge.tenants.get(job.tenant_id)
            outcome = self._index(tenant, job, progress)
        except TenantLLMError as exc:  # the team or its copy is gone
            outcome = IngestOutcome(job.filename, "refused", error=exc.message)
        finished = self._finish(job, outcome)
        if listener is not None:
            listener(finished)
        return finished

    def _index(self, tenant: Tenant, job: JobInfo, progress: JobProgress) -> IngestOutcome:
        data = self._read_staged(tenant, job.id)
        if data is None:
            return IngestOutcome(job.filename, "refused", error=f"{job.filename}: {LOST_COPY}")
        scratch = self._knowledge.tenant_dir(tenant) / "tmp"
        scratch.mkdir(parents=True, exist_ok=True)
        path = scratch / f"job-{job.id}"
        path.write_bytes(data)
        try:
            [outcome] = self._knowledge.ingest(
                tenant, [path], job.uploaded_by, names=[job.filename], progress=progress
            )
            return outcome
        except Exception:  # the store failed (ingest removed what it wrote): the job says so
            log.exception("indexing job %s of %s failed", job.id, tenant.id)
            return IngestOutcome(job.filename, "refused", error=f"{job.filename}: {SERVER_FAILURE}")
        finally:
            path.unlink(missing_ok=True)
            self._delete_staged(tenant, job.id)

    def _read_staged(self, tenant: Tenant, job_id: str) -> bytes | None:
        blob = self._staged.get(tenant, job_id)
        if blob is None:
            return None
        key = crypto.tenant_key(self._master, tenant.id)
        return crypto.decrypt(key, tenant.id, _aad(job_id), blob)

    def _finish(self, job: JobInfo, outcome: IngestOutcome) -> JobInfo:
        state = "failed" if outcome.status == "refused" else outcome.status
        with session_scope(self._db) as session:
            row = jobs.get_job(session, job.tenant_id, job.id)
            assert row is not None  # job rows are never deleted while a worker holds them
            row.state, row.step, row.error = state, "", outcome.error
            row.document_id = outcome.document_id
            row.chunks_done = row.chunks_expected = outcome.chunks
            row.finished_at = row.heartbeat_at = utcnow()
            session.flush()
            requested_sub = row.requested_sub
            finished = jobs.job_info(row)
        self._audit(finished, requested_sub)
        return finished

    # --- audit ------------------------------------------------------------------------------
    def _audit(self, job: JobInfo, requested_sub: str) -> None:
        failed = job.state == "failed"
        self._auditor.record(
            AuditEvent(
                action=ACTOR_ACTION, outcome="error" if failed else "ok",
                user_sub=requested_sub, user_email=job.uploaded_by, tenant_id=job.tenant_id,
                status=400 if failed else 200,
                document_ids=[job.document_id] if job.document_id else [],
                error_class="IngestionError" if failed else None,
                detail=f"{job.filename}: {job.error or job.state} (job {job.id})"[:500],
            )
        )  # fmt: skip

    def _audit_refused(self, tenant: Tenant, new: NewJob, requested_sub: str) -> None:
        self._auditor.record(
            AuditEvent(
                action=ACTOR_ACTION, outcome="error", user_sub=requested_sub,
                tenant_id=tenant.id, status=400, error_class="IngestionError",
                detail=f"{new.filename}: {new.error} (job {new.id})"[:500],
            )
        )  # fmt: skip

    # --- recovery ---------------------------------------------------------------------------
    def recover(self) -> int:
        """Resume or fail the jobs of stopped processes; how many were found."""
        before = utcnow() - timedelta(seconds=self._settings.ingest_job_stale_seconds)
        with session_scope(self._db) as session:
            rows = [r for r in jobs.stale(session, utcnow()) if r.worker != self.worker_id]
            found = [jobs.job_info(r) for r in rows if self._is_gone(r, before)]
        for job in found:
            self._recover_one(job)
        return len(found)

    def _is_gone(self, row: IngestJobRow, before: datetime) -> bool:
        host, _, rest = (row.worker or "").partition(":")
        pid_text, _, token = rest.partition(":")
        if host == self._host and pid_text.isdigit():
            pid = int(pid_text)
            if pid == os.getpid():
                return token != self._token  # this process's earlier life (a container's pid 1)
            return not _alive(pid)
        heartbeat = jobs.aware(row.heartbeat_at)
        return heartbeat is not None and heartbeat < before

    def _recover_one(self, job: JobInfo) -> None:
        error: str | None = None
        try:
            tenant = self._knowledge.tenants.get(job.tenant_id)
            if job.document_id:  # stopped while storing: remove what it may have written
                self._knowledge.discard_partial(tenant, job.document_id)
            kept = self._staged.exists(tenant, job.id)
        except TenantLLMError as exc:
            tenant, kept, error = None, False, exc.message
        with session_scope(self._db) as session:
            row = session.get(IngestJobRow, job.id)
            if row is None or row.state not in jobs.ACTIVE_STATES:
                return
            if kept and (row.attempts < MAX_ATTEMPTS or row.state == "queued"):
                row.state, row.step, row.worker = "queued", "queued", None
                row.pages = row.chunks_done = row.chunks_expected = 0
                row.document_id = None
                return
            requested_sub = row.requested_sub
            row.state, row.step, row.finished_at = "failed", "", utcnow()
            row.error = f"{job.filename}: " + (error or (STOPPED_TWICE if kept else LOST_COPY))
            session.flush()
            failed = jobs.job_info(row)
        if tenant is not None:
            self._delete_staged(tenant, job.id)
        self._audit(failed, requested_sub)

    def _delete_staged(self, tenant: Tenant, job_id: str) -> None:
        self._staged.delete(tenant, job_id)

    # --- the thread -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread (once); it recovers stopped jobs, then runs queued ones."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="ingest-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the worker to stop after its current job; wait up to `timeout` seconds.

        A job still running when the process exits is resumed after the restart.
        """
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        poll = self._settings.ingest_poll_seconds
        while not self._stop.is_set():
            try:
                self.recover()
                self.run_pending()
            except Exception:  # the next round tries again; the app keeps serving
                log.exception("the indexing worker's round failed")
            self._wake.wait(poll)
            self._wake.clear()


LOST_COPY = "the uploaded file was not kept for indexing (the server stopped); upload it again."
STOPPED_TWICE = (
    "indexing stopped twice before it finished (the server restarted or ran out of memory); "
    "upload it again, or split it into smaller files."
)


def _aad(job_id: str) -> str:
    # Bound to the job: a staged copy cannot be passed off as another job's or a document's.
    return f"job-{job_id}"


def _display_name(name: str) -> str:
    try:
        return clean_filename(name)
    except IngestionError:
        return "(unnamed file)"


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
