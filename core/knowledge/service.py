"""Per-tenant knowledge: ingest, list, delete, re-index and retrieve a tenant's documents.

Each tenant has its own vector store (its own Chroma directory) under
`<data_dir>/tenants/<tenant_id>/chroma` and its encrypted originals under `.../files/`,
named by document id (an uploader's file name is display text, never a path). The SQL
registry (core/knowledge/documents.py) is the list of record. A file is stored completely or not at
all: any failure removes what was written for it, and the rest of a batch goes on.
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
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import crypto
from core.config import Settings
from core.datadir import secure_data_dir
from core.db import session_scope
from core.errors import IngestionError, NotFound, QuotaExceeded
from core.knowledge import documents
from core.knowledge.chunking import (
    DOCUMENT_KEY,
    FILENAME_KEY,
    LOCATION_KEY,
    TENANT_KEY,
    build_nodes,
    delete_filter,
)
from core.knowledge.documents import DocumentInfo, IngestOutcome, document_info
from core.knowledge.parsing import ParseLimits, Part, parse_in_sandbox
from core.knowledge.uploads import CheckedUpload, check_upload
from core.knowledge.vectorstore import (
    chroma_store,
    default_retriever,
    delete_nodes,
    embedding_model,
)
from core.tenancy import Source, Tenant, TenantRegistry

if TYPE_CHECKING:
    from llama_index.core import VectorStoreIndex
    from llama_index.core.schema import BaseNode

_CHROMA_BATCH = 1000  # nodes per Chroma add()

log = logging.getLogger(__name__)

DEMO_DOCS_DIR = Path(__file__).resolve().parents[2] / "assets" / "demo_docs"
DEMO_UPLOADER = "system:demo"


class KnowledgeService:
    """Documents and retrieval for every tenant; one per process, per-tenant stores inside."""

    def __init__(self, settings: Settings, tenants: TenantRegistry) -> None:
        self.settings = settings
        self.tenants = tenants
        # Every entry point builds this service: each one gets a private data dir (0700).
        secure_data_dir(settings.data_dir)
        self._db_url = settings.resolved_database_url
        # Resolved now so that a production deployment without a master key fails at startup.
        self._master = crypto.master_key(settings)
        self._indexes: dict[str, VectorStoreIndex] = {}
        self._lock = threading.Lock()
        self._quota_lock = threading.Lock()

    # --- paths and stores ----------------------------------------------------------------
    def tenant_dir(self, tenant: Tenant) -> Path:
        """The tenant's own data directory (its id is a validated slug)."""
        return self.settings.data_dir / "tenants" / self.tenants.get(tenant.id).id

    def _file_path(self, tenant: Tenant, document_id: str) -> Path:
        return self.tenant_dir(tenant) / "files" / f"{document_id}.bin"

    def _index(self, tenant: Tenant) -> VectorStoreIndex:
        from llama_index.core import VectorStoreIndex

        with self._lock:
            index = self._indexes.get(tenant.id)
            if index is None:
                factory = tenant.store_factory or chroma_store
                store = factory(tenant.id, self.tenant_dir(tenant) / "chroma")
                index = VectorStoreIndex.from_vector_store(store, embed_model=embedding_model())
                self._indexes[tenant.id] = index
            return index

    # --- ingestion -----------------------------------------------------------------------
    def ingest(
        self,
        tenant: Tenant,
        files: Sequence[Path],
        uploaded_by: str,
        names: Sequence[str] | None = None,
    ) -> list[IngestOutcome]:
        """Ingest each file (display names from `names`, else the file names); one outcome each."""
        tenant = self.tenants.get(tenant.id)
        names = list(names) if names is not None else [Path(f).name for f in files]
        if len(names) != len(files):
            raise IngestionError("Each file needs exactly one name.")
        outcomes = []
        for path, name in zip(files, names, strict=True):
            try:
                outcomes.append(self._ingest_one(tenant, Path(path), name, uploaded_by))
            except IngestionError as exc:
                outcomes.append(IngestOutcome(filename=name, status="refused", error=exc.message))
            except OSError as exc:
                error = f"{name}: the file could not be read ({exc.strerror or exc})."
                outcomes.append(IngestOutcome(filename=name, status="refused", error=error))
        return outcomes

    def _ingest_one(self, tenant: Tenant, path: Path, name: str, uploaded_by: str) -> IngestOutcome:
        settings = self.settings
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
        quota = self.settings.team_storage_mb * 1024 * 1024
        used = documents.stored_bytes(session, tenant.id)
        if used + len(checked.data) > quota:
            raise QuotaExceeded(
                f"{checked.name}: {tenant.display_name} stores {used / 1e6:.1f} MB of "
                f"documents; this file ({len(checked.data) / 1e6:.1f} MB) would pass the "
                f"team's quota of {self.settings.team_storage_mb} MB. Delete documents the "
                "team no longer needs, or ask an administrator to raise the quota."
            )

    def _parse(
        self, tenant: Tenant, checked: CheckedUpload, limits: ParseLimits | None = None
    ) -> list[Part]:
        # Parse exactly the bytes that were checked, from a private copy: the caller's path
        # could change underneath us, and the worker must never be pointed at user paths.
        scratch = self.tenant_dir(tenant) / "tmp"
        scratch.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=scratch)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(checked.data)
            return parse_in_sandbox(
                Path(tmp_name),
                checked.kind,
                checked.name,
                self.settings.parse_timeout_seconds,
                self.settings.parse_memory_mb,
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
        """Write the encrypted original, the vectors and the registry row, or none of them."""
        self._write_original(tenant, document_id, checked.data)
        store = self._index(tenant).vector_store
        try:
            # Chroma refuses batches over its max batch size (5461 on SQLite); big files
            # come in slices, still removed as a whole if anything below fails.
            for start in range(0, len(nodes), _CHROMA_BATCH):
                store.add(nodes[start : start + _CHROMA_BATCH])
            # Checked again where the row is written, one writer at a time: two uploads
            # that each fit must not pass the quota together.
            with self._quota_lock, session_scope(self._db_url) as session:
                self._check_quota(session, tenant, checked)
                session.add(
                    documents.DocumentRow(
                        id=document_id,
                        tenant_id=tenant.id,
                        filename=checked.name,
                        sha256=sha256,
                        size=len(checked.data),
                        chunks=len(nodes),
                        uploaded_by=uploaded_by,
                        uploaded_at=documents.utcnow(),
                    )
                )
        except BaseException as exc:
            self._remove_stored(tenant, document_id)
            if isinstance(exc, IntegrityError):  # the same content won a concurrent race
                dup = self._find_duplicate(tenant, checked.name, sha256)
                if dup:
                    return dup
            raise
        return IngestOutcome(
            filename=checked.name, status="indexed", chunks=len(nodes), document_id=document_id
        )

    def _write_original(self, tenant: Tenant, document_id: str, data: bytes) -> None:
        key = crypto.tenant_key(self._master, tenant.id)
        path = self._file_path(tenant, document_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(crypto.encrypt(key, tenant.id, document_id, data))
        os.replace(tmp, path)

    def _read_original(self, tenant: Tenant, document_id: str) -> bytes:
        key = crypto.tenant_key(self._master, tenant.id)
        blob = self._file_path(tenant, document_id).read_bytes()
        return crypto.decrypt(key, tenant.id, document_id, blob)

    def _remove_stored(self, tenant: Tenant, document_id: str) -> None:
        delete_nodes(self._index(tenant).vector_store, delete_filter(document_id))
        self._file_path(tenant, document_id).unlink(missing_ok=True)

    # --- listing, deleting, re-indexing --------------------------------------------------
    def list_documents(self, tenant: Tenant) -> list[DocumentInfo]:
        """The tenant's documents, newest first."""
        with session_scope(self._db_url) as session:
            return [document_info(r) for r in documents.list_documents(session, tenant.id)]

    def delete_document(self, tenant: Tenant, document_id: str) -> None:
        """Delete a document, its vectors and its original; NotFound if not this tenant's."""
        with session_scope(self._db_url) as session:
            row = documents.get_document(session, tenant.id, str(document_id))
            if row is None:
                raise NotFound(f"No document {document_id!r} in {tenant.display_name}.")
            # Vectors and file first: if this fails the row stays, and deleting can be retried.
            self._remove_stored(tenant, row.id)
            session.delete(row)

    def reindex(self, tenant: Tenant) -> int:
        """Rebuild the tenant's vectors from its stored originals; returns the chunk count."""
        tenant = self.tenants.get(tenant.id)
        rebuilt: list[tuple[str, list[BaseNode]]] = []
        for info in self.list_documents(tenant):
            data = self._read_original(tenant, info.id)
            checked = CheckedUpload(name=info.filename, kind=_kind_of(info.filename), data=data)
            parts = self._parse(tenant, checked)
            chunk_args = (self.settings.chunk_size, self.settings.chunk_overlap)
            nodes = build_nodes(tenant.id, info.id, info.filename, parts, *chunk_args)
            rebuilt.append((info.id, nodes))
        # Everything is parsed and embedded before the store is touched: a failure above
        # leaves the old index intact. clear() also drops any orphaned vectors.
        store = self._index(tenant).vector_store
        delete_nodes(store, None)
        with session_scope(self._db_url) as session:
            for document_id, nodes in rebuilt:
                if nodes:
                    store.add(nodes)
                row = documents.get_document(session, tenant.id, document_id)
                if row is not None:
                    row.chunks = len(nodes)
        return sum(len(nodes) for _, nodes in rebuilt)

    # --- retrieval -----------------------------------------------------------------------
    def retrieve(self, tenant: Tenant, query: str, top_k: int | None = None) -> list[Source]:
        """The tenant's chunks most relevant to `query`, through the tenant's own retriever."""
        tenant = self.tenants.get(tenant.id)
        if not query or not query.strip():
            return []
        k = top_k or tenant.top_k or self.settings.top_k
        factory = tenant.retriever_factory or default_retriever
        results = factory(self._index(tenant), k).retrieve(query)
        if not results:
            return []
        # Only the returned ids are looked up: the cost does not grow with the tenant's documents.
        returned = {str(r.node.metadata.get(DOCUMENT_KEY)) for r in results}
        with session_scope(self._db_url) as session:
            known = documents.registered_ids(session, tenant.id, returned)
        sources = []
        for result in results:
            meta = result.node.metadata
            # Second guard behind the separate store: only this tenant's registered documents.
            if meta.get(TENANT_KEY) != tenant.id or meta.get(DOCUMENT_KEY) not in known:
                continue
            sources.append(
                Source(
                    document_id=str(meta[DOCUMENT_KEY]),
                    filename=str(meta.get(FILENAME_KEY, "")),
                    location=str(meta.get(LOCATION_KEY, "")),
                    snippet=result.node.get_content(),
                    score=float(result.score or 0.0),
                )
            )
        return sources[:k]

    def open_stores(self) -> None:
        """Open every tenant's store now, so that no tenant's first question waits for it.

        Opening loads the embedding model and llama-index's defaults (about 0.5 s the first
        time). A store that cannot open is logged; its tenant's questions then report it.
        """
        for tenant in self.tenants.all():
            try:
                self._index(tenant)
            except Exception:
                log.exception("the document store of %s could not be opened", tenant.id)

    def ensure_demo_documents(self) -> None:
        """Ingest `assets/demo_docs/<tenant>/` for every tenant that has such a folder, once."""
        for tenant in self.tenants.all():
            folder = DEMO_DOCS_DIR / tenant.id
            if not folder.is_dir():
                continue
            files = sorted(p for p in folder.iterdir() if p.is_file())
            for outcome in self.ingest(tenant, files, DEMO_UPLOADER):
                if outcome.status == "refused":
                    log.warning("demo document refused for %s: %s", tenant.id, outcome.error)


def _kind_of(filename: str) -> str:
    from core.knowledge.uploads import SUPPORTED_TYPES

    return SUPPORTED_TYPES[Path(filename).suffix.lower()]
