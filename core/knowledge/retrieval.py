"""Retrieval: a tenant's chunks most relevant to a question, as citable sources.

The tenant's own retriever (its plugin's `retriever_factory`, else plain top-k similarity)
runs over the tenant's own index; what it returns is then checked again here: only chunks of
this tenant's registered documents become sources.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.db import session_scope
from core.knowledge import documents
from core.knowledge.chunking import DOCUMENT_KEY, FILENAME_KEY, LOCATION_KEY, TENANT_KEY
from core.knowledge.vectorstore import default_retriever
from core.tenancy import Source, Tenant

if TYPE_CHECKING:
    from llama_index.core import VectorStoreIndex


def retrieve(
    tenant: Tenant, index: VectorStoreIndex, query: str, top_k: int, db_url: str
) -> list[Source]:
    """At most `top_k` sources for `query` from the tenant's `index`, best first."""
    factory = tenant.retriever_factory or default_retriever
    results = factory(index, top_k).retrieve(query)
    if not results:
        return []
    # Only the returned ids are looked up: the cost does not grow with the tenant's documents.
    returned = {str(r.node.metadata.get(DOCUMENT_KEY)) for r in results}
    with session_scope(db_url) as session:
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
    return sources[:top_k]
