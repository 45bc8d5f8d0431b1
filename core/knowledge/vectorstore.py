"""Core's defaults for a tenant's vectors: the embedding model, the store, the retriever.

Every tenant gets its own Chroma persistence directory (its own PersistentClient): Chroma's
tenants/databases are namespaces, not a security boundary (a collection id from one opens in
another's client), so separate databases are the boundary. The collection name is a constant
chosen here; no function takes a collection name or id from anywhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import chromadb
from chromadb.config import Settings as ChromaSettings

# The embedding model lives in `embeddings`; re-exported here for the callers of old.
from core.knowledge.embeddings import EMBED_BATCH_SIZE, EMBEDDING_MODEL_DIR, embedding_model  # noqa: F401

if TYPE_CHECKING:
    from llama_index.core import VectorStoreIndex
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.vector_stores import MetadataFilters
    from llama_index.core.vector_stores.types import BasePydanticVectorStore
    from llama_index.vector_stores.chroma import ChromaVectorStore

COLLECTION_NAME = "documents"


def _chroma_settings() -> ChromaSettings:
    # Chroma keeps one system per directory and refuses a second client with different
    # settings, so every client is built from identical settings.
    return ChromaSettings(anonymized_telemetry=False, allow_reset=False)


def chroma_store(tenant_id: str, directory: Path) -> ChromaVectorStore:
    """Core's default store: a Chroma PersistentClient of its own in `directory`.

    `embedding_function=None`: Chroma's default would download a model at run time; our
    vectors always come from `embedding_model()`. Cosine space suits MiniLM embeddings.
    """
    from llama_index.vector_stores.chroma import ChromaVectorStore

    directory.mkdir(parents=True, exist_ok=True)
    client = chromadb.PersistentClient(path=str(directory), settings=_chroma_settings())
    collection = client.get_or_create_collection(
        COLLECTION_NAME,
        embedding_function=None,
        configuration={"hnsw": {"space": "cosine"}},
        metadata={"tenant_id": tenant_id},
    )
    return ChromaVectorStore(chroma_collection=collection)


def default_retriever(index: VectorStoreIndex, top_k: int) -> BaseRetriever:
    """Core's default retriever: plain top-k similarity over the tenant's own index."""
    return index.as_retriever(similarity_top_k=top_k)


def delete_nodes(store: BasePydanticVectorStore, filters: MetadataFilters | None) -> None:
    """Delete the nodes matching `filters` (all when None).

    The ids are looked up first: ChromaVectorStore's delete_nodes(filters=...) and clear()
    send an empty id list when there is nothing to match, which Chroma 1.5 rejects.
    """
    node_ids = [node.node_id for node in store.get_nodes(None, filters=filters)]
    if node_ids:
        store.delete_nodes(node_ids=node_ids)
