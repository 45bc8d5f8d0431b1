"""From parsed parts to embedded chunks (llama-index nodes) that carry our own metadata.

Every chunk of a document carries `tenant_id` and `tenantllm_document_id`, set by us: deleting
a document deletes exactly the chunks with its id (`delete_filter`), and retrieval can
double-check the tenant. Each part is its own llama-index Document (`<id>:<n>`): parts that
shared one id would share one parent, and so one location.
"""

from __future__ import annotations

from collections.abc import Sequence

from llama_index.core import Document
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import BaseNode
from llama_index.core.vector_stores import MetadataFilter, MetadataFilters

from core.errors import FileTooLarge
from core.knowledge.parsing import Part
from core.knowledge.vectorstore import embedding_model

TENANT_KEY = "tenant_id"
DOCUMENT_KEY = "tenantllm_document_id"
FILENAME_KEY = "filename"
LOCATION_KEY = "location"
_OUR_KEYS = [TENANT_KEY, DOCUMENT_KEY, FILENAME_KEY, LOCATION_KEY]


def build_nodes(
    tenant_id: str,
    document_id: str,
    filename: str,
    parts: Sequence[Part],
    chunk_size: int,
    chunk_overlap: int,
    max_chunks: int | None = None,
) -> list[BaseNode]:
    """Split `parts` with SentenceSplitter and embed them; [] when there is no text at all.

    FileTooLarge when the split gives more than `max_chunks` chunks: counted before
    embedding, which is what costs (seconds of CPU per hundred chunks).
    """
    documents = _documents(tenant_id, document_id, filename, parts)
    if not documents:
        return []
    splitter = SentenceSplitter(
        chunk_size=chunk_size, chunk_overlap=min(chunk_overlap, chunk_size // 2)
    )
    nodes = [n for n in splitter(documents) if n.get_content().strip()]
    if max_chunks is not None and len(nodes) > max_chunks:
        raise FileTooLarge(
            f"{filename}: its text makes {len(nodes):,} chunks, over the limit of "
            f"{max_chunks:,} per file; split it into smaller files."
        )
    nodes = list(embedding_model()(nodes))
    for number, node in enumerate(nodes, start=1):
        # Parts without a natural location (plain text, .docx) are cited by chunk number.
        if not node.metadata.get(LOCATION_KEY):
            node.metadata[LOCATION_KEY] = f"part {number}"
    return nodes


def _documents(
    tenant_id: str, document_id: str, filename: str, parts: Sequence[Part]
) -> list[Document]:
    """One llama-index Document per non-empty part, carrying our metadata."""
    return [
        Document(
            id_=f"{document_id}:{number}",
            text=part.text,
            metadata={
                TENANT_KEY: tenant_id,
                DOCUMENT_KEY: document_id,
                FILENAME_KEY: filename,
                LOCATION_KEY: part.location,
            },
            # Our bookkeeping must not leak into the embedded text or the prompt.
            excluded_embed_metadata_keys=list(_OUR_KEYS),
            excluded_llm_metadata_keys=list(_OUR_KEYS),
        )
        for number, part in enumerate(parts)
        if part.text.strip()
    ]


def delete_filter(document_id: str) -> MetadataFilters:
    """Matches every chunk of one document (by the id we set, not llama-index's)."""
    return MetadataFilters(filters=[MetadataFilter(key=DOCUMENT_KEY, value=document_id)])
