"""Per-tenant knowledge: ingest, list, delete, re-index and retrieve a tenant's documents.

The one object the rest of core uses for documents. It holds the process's per-tenant parts
and hands each call to the module whose job it is: `tenant_files` (directories, encrypted
originals), `indexes` (each tenant's open vector and keyword indexes), `ingestion` (the
upload path and re-indexing), `retrieval`, `demo` (the demo documents). The SQL registry
(core/knowledge/documents.py) is the list of record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from core.config import Settings
from core.datadir import secure_data_dir
from core.db import session_scope
from core.errors import InvalidRequest, NotFound
from core.knowledge import documents, retrieval
from core.knowledge.chroma_server import ChromaServers, store_errors
from core.knowledge.demo import DEMO_UPLOADER, demo_files
from core.knowledge.documents import DocumentInfo, IngestOutcome, document_info
from core.knowledge.indexes import TenantIndexes
from core.knowledge.ingestion import Ingestion, IngestProgress
from core.knowledge.keyword import KeywordIndex
from core.knowledge.tenant_files import TenantFiles
from core.metrics import Metrics
from core.tenancy import Source, Tenant, TenantRegistry

if TYPE_CHECKING:
    from llama_index.core import VectorStoreIndex
    from llama_index.core.vector_stores.types import BasePydanticVectorStore

__all__ = ["DocumentInfo", "IngestOutcome", "KnowledgeService"]

log = logging.getLogger(__name__)


class KnowledgeService:
    """Documents and retrieval for every tenant; one per process, per-tenant stores inside."""

    def __init__(
        self, settings: Settings, tenants: TenantRegistry, *, metrics: Metrics | None = None
    ) -> None:
        self.settings = settings
        self.tenants = tenants
        self.metrics = metrics or Metrics((), enabled=False)
        # Every entry point builds this service: each one gets a private data dir (0700).
        secure_data_dir(settings.data_dir)
        self._db_url = settings.resolved_database_url
        self._files = TenantFiles(settings, tenants)
        self._servers = ChromaServers(settings)
        self._indexes = TenantIndexes(self._files, self._servers)
        self._ingestion = Ingestion(settings, self._files, self._indexes)

    def tenant_dir(self, tenant: Tenant) -> Path:
        """The tenant's own data directory (its id is a validated slug)."""
        return self._files.tenant_dir(tenant)

    def vector_store(self, tenant: Tenant) -> BasePydanticVectorStore:
        """The tenant's own vector store, as retrieval and ingestion use it (opened if needed)."""
        with store_errors():
            return self._index(tenant).vector_store

    def ingest(
        self,
        tenant: Tenant,
        files: Sequence[Path],
        uploaded_by: str,
        names: Sequence[str] | None = None,
        progress: IngestProgress | None = None,
    ) -> list[IngestOutcome]:
        """Ingest each file (display names from `names`, else the file names); one outcome each.

        `progress` hears where each file stands (the background jobs' progress).
        """
        tenant = self.tenants.get(tenant.id)
        names = list(names) if names is not None else [Path(f).name for f in files]
        started = time.perf_counter()
        with store_errors():  # a Chroma server that does not answer: typed, nothing kept
            outcomes = self._ingestion.ingest(tenant, files, names, uploaded_by, progress)
        elapsed = time.perf_counter() - started
        self.metrics.observe_indexing(tenant.id, "upload", elapsed, (o.status for o in outcomes))
        return outcomes

    def discard_partial(self, tenant: Tenant, document_id: str) -> bool:
        """Remove what an interrupted ingest stored under `document_id` if it was never
        registered (a process stopped mid-store); True if so."""
        return self._ingestion.discard_partial(self.tenants.get(tenant.id), document_id)

    def list_documents(self, tenant: Tenant) -> list[DocumentInfo]:
        """The tenant's documents, newest first."""
        with session_scope(self._db_url) as session:
            return [document_info(r) for r in documents.list_documents(session, tenant.id)]

    def _document_set(self, tenant: Tenant) -> str:
        with session_scope(self._db_url) as session:
            return documents.document_set_version(session, tenant.id)

    def delete_document(self, tenant: Tenant, document_id: str) -> None:
        """Delete a document, its vectors and its original; NotFound if not this tenant's."""
        with session_scope(self._db_url) as session:
            row = documents.get_document(session, tenant.id, str(document_id))
            if row is None:
                raise NotFound(f"No document {document_id!r} in {tenant.display_name}.")
            # Vectors and file first: if this fails the row stays, and deleting can be retried.
            with store_errors():
                self._ingestion.remove(tenant, row.id, session)
            session.delete(row)

    def reindex(self, tenant: Tenant) -> int:
        """Rebuild the tenant's vectors from its stored originals; returns the chunk count."""
        tenant = self.tenants.get(tenant.id)
        started = time.perf_counter()
        with store_errors():
            chunks = self._ingestion.reindex(tenant, self.list_documents(tenant))
        self.metrics.observe_indexing(tenant.id, "reindex", time.perf_counter() - started)
        return chunks

    def retrieve(
        self,
        tenant: Tenant,
        query: str,
        top_k: int | None = None,
        *,
        keyword_weight: float | None = None,
    ) -> list[Source]:
        """The tenant's chunks most relevant to `query`: its own retriever fused with BM25.

        `keyword_weight` overrides the tenant's (then the setting's) weight of the keyword
        ranking: 0 is dense only, 1 keyword only (evaluation and benchmarks compare them).
        """
        tenant = self.tenants.get(tenant.id)
        if not query or not query.strip():
            return []
        k = top_k or tenant.top_k or self.settings.top_k
        blend = self._blend(tenant, keyword_weight)
        started = time.perf_counter()
        with store_errors():
            if self._indexes.shared(tenant):  # another replica may have changed its documents
                self._indexes.follow(tenant, self._document_set(tenant))
            keywords = self._indexes.keywords(tenant)
            sources = retrieval.retrieve(
                tenant, self._index(tenant), keywords, query, k, blend, self._db_url
            )
        self.metrics.observe_retrieval(tenant.id, time.perf_counter() - started)
        return sources

    def keyword_index(self, tenant: Tenant) -> KeywordIndex:
        """The tenant's own BM25 index, as retrieval and ingestion use it (tests, bench)."""
        with store_errors():
            return self._indexes.keywords(self.tenants.get(tenant.id))

    def _blend(self, tenant: Tenant, keyword_weight: float | None) -> retrieval.Blend:
        weight = keyword_weight
        if weight is None:
            weight = tenant.keyword_weight
        if weight is None:
            weight = self.settings.retrieval_keyword_weight
        if not 0.0 <= weight <= 1.0:
            raise InvalidRequest(f"The keyword weight must be between 0 and 1, not {weight}.")
        return retrieval.Blend(
            keyword_weight=weight,
            candidates=self.settings.retrieval_candidates,
            rrf_k=self.settings.retrieval_rrf_k,
        )

    def open_stores(self) -> None:
        """Open every tenant's stores now, so that no tenant's first question waits for them.

        A store that cannot open is logged; its tenant's questions then report it.
        """
        for tenant in self.tenants.all():
            try:
                self._indexes.keywords(tenant)  # opens the vector index first
            except Exception:
                log.exception("the document store of %s could not be opened", tenant.id)

    def ensure_demo_documents(self) -> None:
        """Ingest `assets/demo_docs/<tenant>/` for every tenant that has such a folder, once."""
        for tenant in self.tenants.all():
            for outcome in self.ingest(tenant, demo_files(tenant), DEMO_UPLOADER):
                if outcome.status == "refused":
                    log.warning("demo document refused for %s: %s", tenant.id, outcome.error)

    def _index(self, tenant: Tenant) -> VectorStoreIndex:
        return self._indexes.get(tenant)
