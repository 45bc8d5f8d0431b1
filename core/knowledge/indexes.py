"""Each tenant's indexes, opened once and kept for the life of the process.

Two per tenant: its vector index (its plugin's `store_factory` in the tenant's own
directory, else its database on a Chroma server when one is configured, else core's embedded
Chroma store in its directory) and its keyword (BM25) index, in its directory. Opening a vector
index loads the embedding model and llama-index's defaults the first time (about 0.5 s),
which is why `KnowledgeService.open_stores` does it at startup. A keyword index that was
never written (a data dir from before hybrid retrieval) is built once from the tenant's
vectors, so documents ingested earlier are found by keyword too.

On a Chroma server the vectors are shared by every app replica, but each replica keeps its
keyword index in its own data dir: `follow` rebuilds it from the server's chunks whenever the
team's document set (a digest of the shared registry) is not the one it was built from, so a
document uploaded through another replica is found by keyword here too.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from core.knowledge.chroma_server import ChromaServers
from core.knowledge.keyword import KeywordIndex
from core.knowledge.tenant_files import TenantFiles
from core.knowledge.vectorstore import chroma_store, embedding_model
from core.tenancy import Tenant

if TYPE_CHECKING:
    from llama_index.core import VectorStoreIndex
    from llama_index.core.vector_stores.types import BasePydanticVectorStore

log = logging.getLogger(__name__)


class TenantIndexes:
    """The open indexes of every tenant that has been used so far."""

    def __init__(self, files: TenantFiles, servers: ChromaServers) -> None:
        self._files = files
        self._servers = servers
        self._open: dict[str, VectorStoreIndex] = {}
        self._keywords: dict[str, KeywordIndex] = {}
        self._followed: dict[str, str] = {}  # tenant id -> document set its keywords hold
        self._lock = threading.Lock()

    def get(self, tenant: Tenant) -> VectorStoreIndex:
        """The tenant's vector index, opened on first use (once, even under concurrent calls)."""
        from llama_index.core import VectorStoreIndex

        with self._lock:
            index = self._open.get(tenant.id)
            if index is None:
                store = self._open_store(tenant)
                index = VectorStoreIndex.from_vector_store(store, embed_model=embedding_model())
                self._open[tenant.id] = index
            return index

    def keywords(self, tenant: Tenant) -> KeywordIndex:
        """The tenant's keyword index, opened (or first built from its vectors) on first use."""
        with self._lock:
            index = self._keywords.get(tenant.id)
        if index is not None:
            return index
        vectors = self.get(tenant)  # outside the lock: get() takes it
        with self._lock:
            index = self._keywords.get(tenant.id)
            if index is None:
                index = KeywordIndex(tenant.id, self._files.keyword_dir(tenant))
                if not index.exists():
                    _backfill(index, vectors)
                self._keywords[tenant.id] = index
            return index

    def shared(self, tenant: Tenant) -> bool:
        """Whether the tenant's vectors live on a Chroma server (shared by the replicas)."""
        return tenant.store_factory is None and bool(self._servers.url_for(tenant))

    def follow(self, tenant: Tenant, document_set: str) -> None:
        """Rebuild the tenant's keyword index from its vectors unless it was last built for
        this version of its document set (`documents.document_set_version`)."""
        keywords = self.keywords(tenant)
        with self._lock:
            if self._followed.get(tenant.id) == document_set:
                return
        vectors = self.get(tenant)
        _backfill(keywords, vectors)
        with self._lock:
            self._followed[tenant.id] = document_set

    def _open_store(self, tenant: Tenant) -> BasePydanticVectorStore:
        """The tenant's vector store: its plugin's, its Chroma server database, or embedded."""
        if tenant.store_factory is not None:
            return tenant.store_factory(tenant.id, self._files.chroma_dir(tenant))
        url = self._servers.url_for(tenant)
        if url:
            return self._servers.store(tenant.id, url)
        return chroma_store(tenant.id, self._files.chroma_dir(tenant))

    def opened(self) -> set[str]:
        """The ids of the tenants whose vector index is open."""
        with self._lock:
            return set(self._open)


def _backfill(index: KeywordIndex, vectors: VectorStoreIndex) -> None:
    """Build the keyword index from the chunks the vector store already holds."""
    try:
        nodes = vectors.vector_store.get_nodes(None)
    except NotImplementedError:
        # A plugin's store that cannot list its chunks: keyword search starts empty and
        # fills with the next uploads (a re-index fills it completely).
        log.warning("the store of %s cannot list its chunks; keyword index starts empty",
                    index.tenant_id)  # fmt: skip
        nodes = []
    index.replace(nodes)  # replace() keeps only this tenant's chunks
