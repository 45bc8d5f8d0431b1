"""The upload path: check, de-duplicate, quota, parse, chunk, store; and re-indexing.

A file is stored completely or not at all: its encrypted original, its vectors, its keyword
(BM25) entries and its registry row (core/knowledge/documents.py, the list of record) are
written together, and any failure removes what was written for it. In a batch, one file's
failure is its own outcome; the rest of the batch goes on.

An `IngestProgress` hears where one file stands (parsed, each embedded batch, storing under
which document id): the background jobs (core/knowledge/ingest_worker.py) write it to the
job's row; the document id is known before anything is stored, so that a process stopped
mid-store can have what it wrote removed (`discard_partial`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.config import Settings
from core.db import session_scope, utcnow
from core.errors import IngestionError, QuotaExceeded
from core.knowledge import documents
from core.knowledge.chunking import build_nodes, delete_filter
from core.knowledge.documents import DocumentInfo, IngestOutcome
from core.knowledge.embed_progress import EmbeddingSink, reporting_to
from core.knowledge.indexes import TenantIndexes
from core.knowledge.parsing import ParseLimits, Part, parse_in_sandbox
from core.knowledge.tenant_files import TenantFiles
from core.knowledge.uploads import SUPPORTED_TYPES, CheckedUpload, check_upload
from core.knowledge.vectorstore import delete_nodes
from core.tenancy import Tenant

if TYPE_CHECKING:
    from llama_index.core.schema import BaseNode

log = logging.getLogger(__name__)
_CHROMA_BATCH = 1000  # nodes per Chroma add()


class IngestProgress(EmbeddingSink, Protocol):
    """Who hears where one file's indexing stands (besides its embedded batches)."""

    def parsed(self, parts: int) -> None:
        """The file was parsed into `parts` parts (a PDF's pages, a CSV's row blocks...)."""

    def storing(self, document_id: str) -> None:
        """Its chunks are about to be stored under `document_id`."""


class Ingestion:
    """Writes and rewrites tenants' documents: originals, vectors and registry rows."""

    def __init__(self, settings: Settings, files: TenantFiles, indexes: TenantIndexes) -> None:
        self._settings = settings
        self._db_url = settings.resolved_database_url
        self._files = files
        self._indexes = indexes
        self._quota_lock = threading.Lock()

    def ingest(
        self,
        tenant: Tenant,
        files: Sequence[Path],
        names: Sequence[str],
        uploaded_by: str,
        progress: IngestProgress | None = None,
    ) -> list[IngestOutcome]:
        """Ingest each file under its display name; one outcome each, refusals included."""
        if len(names) != len(files):
            raise IngestionError("Each file needs exactly one name.")
        outcomes = []
        for path, name in zip(files, names, strict=True):
            try:
                outcomes.append(self._ingest_one(tenant, Path(path), name, uploaded_by, progress))
            except IngestionError as exc:
                outcomes.append(IngestOutcome(filename=name, status="refused", error=exc.message))
            except OSError as exc:
                error = f"{name}: the file could not be read ({exc.strerror or exc})."
                outcomes.append(IngestOutcome(filename=name, status="refused", error=error))
        return outcomes

    def discard_partial(self, tenant: Tenant, document_id: str) -> bool:
        """Remove what a stopped store wrote for `document_id`, unless it was registered.

        True when there was no registry row (so anything written was removed).
        """
        with session_scope(self._db_url) as session:
            if documents.get_document(session, tenant.id, document_id) is not None:
                return False
        self.remove(tenant, document_id)
        return True

    def remove(self, tenant: Tenant, document_id: str, session: Session | None = None) -> None:
        """Delete a document's vectors, keyword entries and original (the row is the caller's;
        with `session`, a database-kept original goes with the row's commit)."""
        delete_nodes(self._indexes.get(tenant).vector_store, delete_filter(document_id))
        self._indexes.keywords(tenant).remove_document(document_id)
        self._files.remove_original(tenant, document_id, session)

    def _discard(self, tenant: Tenant, document_id: str) -> None:
        """After a failed store: remove what was written, each part even if another fails.

        The original and keyword entries always go; vectors a dead Chroma server cannot
        delete stay as strays that no registry row vouches for (retrieval drops them, a
        re-index clears them).
        """
        parts = (
            lambda: self._files.remove_original(tenant, document_id),
            lambda: self._indexes.keywords(tenant).remove_document(document_id),
            lambda: delete_nodes(
                self._indexes.get(tenant).vector_store, delete_filter(document_id)
            ),
        )
        for undo in parts:
            try:
                undo()
            except Exception:
                log.warning(
                    "could not undo part of the failed store of %s", document_id, exc_info=True
                )

    def reindex(self, tenant: Tenant, infos: Sequence[DocumentInfo]) -> int:
        """Rebuild the tenant's vectors and keyword index from the originals of `infos`; chunks."""
        settings = self._settings
        rebuilt: list[tuple[str, list[BaseNode]]] = []
        for info in infos:
            data = self._files.read_original(tenant, info.id)
            kind = SUPPORTED_TYPES[Path(info.filename).suffix.lower()]
            parts = self._parse(tenant, CheckedUpload(name=info.filename, kind=kind, data=data))
            chunk_args = (settings.chunk_size, settings.chunk_overlap)
            nodes = build_nodes(tenant.id, info.id, info.filename, parts, *chunk_args)
            rebuilt.append((info.id, nodes))
        # Everything is parsed and embedded before the store is touched: a failure above
        # leaves the old index intact. clear() also drops any orphaned vectors.
        store = self._indexes.get(tenant).vector_store
        delete_nodes(store, None)
        with session_scope(self._db_url) as session:
            for document_id, nodes in rebuilt:
                if nodes:
                    store.add(nodes)
                row = documents.get_document(session, tenant.id, document_id)
                if row is not None:
                    row.chunks = len(nodes)
        self._indexes.keywords(tenant).replace(n for _, nodes in rebuilt for n in nodes)
        return sum(len(nodes) for _, nodes in rebuilt)

    def _ingest_one(
        self,
        tenant: Tenant,
        path: Path,
        name: str,
        uploaded_by: str,
        progress: IngestProgress | None = None,
    ) -> IngestOutcome:
        settings = self._settings
        max_bytes = settings.max_upload_mb * 1024 * 1024
        checked = check_upload(path, name, max_bytes, settings.max_document_chars)
        sha256 = hashlib.sha256(checked.data).hexdigest()
        duplicate = self._find_duplicate(tenant, checked.name, sha256)
        if duplicate:
            return duplicate
        # Cheap checks first: a team at its quota costs no parse and no embedding.
        with session_scope(self._db_url) as session:
            self._check_quota(session, tenant, checked)
        document_id = uuid.uuid4().hex
        limits = ParseLimits(settings.max_document_chars, settings.max_pdf_pages)
        parts = self._parse(tenant, checked, limits)
        if progress is not None:
            progress.parsed(len(parts))
        with reporting_to(progress):
            nodes = build_nodes(
                tenant.id,
                document_id,
                checked.name,
                parts,
                settings.chunk_size,
                settings.chunk_overlap,
                settings.max_document_chunks,
            )
        if not nodes:
            raise IngestionError(f"{checked.name}: no text could be extracted (a scanned image?).")
        if progress is not None:
            progress.storing(document_id)
        return self._store(tenant, document_id, checked, sha256, nodes, uploaded_by)

    def _find_duplicate(self, tenant: Tenant, name: str, sha256: str) -> IngestOutcome | None:
        with session_scope(self._db_url) as session:
            row = documents.find_by_sha(session, tenant.id, sha256)
            if row is None:
                return None
            return IngestOutcome(
                filename=name, status="duplicate", chunks=row.chunks, document_id=row.id
            )

    def _check_quota(self, session: Session, tenant: Tenant, checked: CheckedUpload) -> None:
        """QuotaExceeded if adding this file would put the team over its storage quota."""
        quota = self._settings.team_storage_mb * 1024 * 1024
        used = documents.stored_bytes(session, tenant.id)
        if used + len(checked.data) > quota:
            raise QuotaExceeded(
                f"{checked.name}: {tenant.display_name} stores {used / 1e6:.1f} MB of "
                f"documents; this file ({len(checked.data) / 1e6:.1f} MB) would pass the "
                f"team's quota of {self._settings.team_storage_mb} MB. Delete documents the "
                "team no longer needs, or ask an administrator to raise the quota."
            )

    def _parse(
        self, tenant: Tenant, checked: CheckedUpload, limits: ParseLimits | None = None
    ) -> list[Part]:
        # Parse exactly the bytes that were checked, from a private copy: the caller's path
        # could change underneath us, and the worker must never be pointed at user paths.
        fd, tmp_name = tempfile.mkstemp(dir=self._files.scratch_dir(tenant))
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(checked.data)
            return parse_in_sandbox(
                Path(tmp_name),
                checked.kind,
                checked.name,
                self._settings.parse_timeout_seconds,
                self._settings.parse_memory_mb,
                limits,
            )
        finally:
            os.unlink(tmp_name)

    def _store(
        self,
        tenant: Tenant,
        document_id: str,
        checked: CheckedUpload,
        sha256: str,
        nodes: list[BaseNode],
        uploaded_by: str,
    ) -> IngestOutcome:
        """Write the vectors, then the registry row and encrypted original, or none of them."""
        store = self._indexes.get(tenant).vector_store
        try:
            # Chroma refuses batches over its max batch size (5461 on SQLite); big files
            # come in slices, still removed as a whole if anything below fails.
            for start in range(0, len(nodes), _CHROMA_BATCH):
                store.add(nodes[start : start + _CHROMA_BATCH])
            self._indexes.keywords(tenant).add(nodes)
            # Checked again where the row is written, one writer at a time: two uploads
            # that each fit must not pass the quota together.
            with self._quota_lock, session_scope(self._db_url) as session:
                self._check_quota(session, tenant, checked)
                row = _registry_row(tenant, document_id, checked, sha256, len(nodes), uploaded_by)
                session.add(row)
                # Last, in the row's transaction: a database-kept original commits with it.
                self._files.write_original(tenant, document_id, checked.data, session)
        except BaseException as exc:
            self._discard(tenant, document_id)
            if isinstance(exc, IntegrityError):  # the same content won a concurrent race
                dup = self._find_duplicate(tenant, checked.name, sha256)
                if dup:
                    return dup
            raise
        return IngestOutcome(
            filename=checked.name, status="indexed", chunks=len(nodes), document_id=document_id
        )


def _registry_row(
    tenant: Tenant,
    document_id: str,
    checked: CheckedUpload,
    sha256: str,
    chunks: int,
    uploaded_by: str,
) -> documents.DocumentRow:
    return documents.DocumentRow(
        id=document_id,
        tenant_id=tenant.id,
        filename=checked.name,
        sha256=sha256,
        size=len(checked.data),
        chunks=chunks,
        uploaded_by=uploaded_by,
        uploaded_at=utcnow(),
    )
