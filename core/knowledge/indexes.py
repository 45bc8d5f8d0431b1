"""Each tenant's vector index, opened once and kept for the life of the process.

A tenant's store comes from its plugin's `store_factory`, else core's Chroma store, always in
the tenant's own directory. Opening one loads the embedding model and llama-index's defaults
the first time (about 0.5 s), which is why `KnowledgeService.open_stores` does it at startup.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from core.knowledge.tenant_files import TenantFiles
from core.knowledge.vectorstore import chroma_store, embedding_model
from core.tenancy import Tenant

if TYPE_CHECKING:
    from llama_index.core import VectorStoreIndex


class TenantIndexes:
    """The open index of every tenant that has been used so far."""

    def __init__(self, files: TenantFiles) -> None:
        self._files = files
        self._open: dict[str, VectorStoreIndex] = {}
        self._lock = threading.Lock()

    def get(self, tenant: Tenant) -> VectorStoreIndex:
        """The tenant's index, opened on first use (one opening even under concurrent calls)."""
        from llama_index.core import VectorStoreIndex

        with self._lock:
            index = self._open.get(tenant.id)
            if index is None:
                factory = tenant.store_factory or chroma_store
                store = factory(tenant.id, self._files.chroma_dir(tenant))
                index = VectorStoreIndex.from_vector_store(store, embed_model=embedding_model())
                self._open[tenant.id] = index
            return index

    def opened(self) -> set[str]:
        """The ids of the tenants whose index is open."""
        with self._lock:
            return set(self._open)
