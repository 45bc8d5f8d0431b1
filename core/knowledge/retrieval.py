"""Retrieval: a tenant's chunks most relevant to a question, as citable sources.

Hybrid: the tenant's own retriever (its plugin's `retriever_factory`, else plain top-k
similarity) ranks by meaning, the tenant's BM25 index (core/knowledge/keyword.py) by words,
and reciprocal rank fusion merges the two rankings: a chunk scores
`(1 - w) / (rrf_k + dense rank) + w / (rrf_k + keyword rank)`, `w` the keyword weight
(the tenant's, else the setting). Ranks, not raw scores, are fused: cosine similarities and
BM25 scores have no common scale. `w = 0` is the tenant's retriever alone, exactly as before.
Both indexes are the tenant's own; what comes back is checked again here: only chunks of this
tenant's registered documents become sources.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.db import session_scope
from core.knowledge import documents
from core.knowledge.chunking import DOCUMENT_KEY, FILENAME_KEY, LOCATION_KEY, TENANT_KEY
from core.knowledge.keyword import KeywordIndex
from core.knowledge.vectorstore import default_retriever
from core.tenancy import Source, Tenant

if TYPE_CHECKING:
    from llama_index.core import VectorStoreIndex
    from llama_index.core.schema import NodeWithScore


@dataclass(frozen=True)
class Blend:
    """How the dense and keyword rankings are fused for one query."""

    keyword_weight: float
    candidates: int
    rrf_k: int


def retrieve(
    tenant: Tenant,
    index: VectorStoreIndex,
    keywords: KeywordIndex,
    query: str,
    top_k: int,
    blend: Blend,
    db_url: str,
) -> list[Source]:
    """At most `top_k` sources for `query` from the tenant's own indexes, best first."""
    results = rank(tenant, index, keywords, query, top_k, blend)
    if not results:
        return []
    # Only the returned ids are looked up: the cost does not grow with the tenant's documents.
    returned = {str(r.node.metadata.get(DOCUMENT_KEY)) for r in results}
    with session_scope(db_url) as session:
        known = documents.registered_ids(session, tenant.id, returned)
    sources = []
    for result in results:
        meta = result.node.metadata
        # Second guard behind the separate indexes: only this tenant's registered documents.
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


def rank(
    tenant: Tenant,
    index: VectorStoreIndex,
    keywords: KeywordIndex,
    query: str,
    top_k: int,
    blend: Blend,
) -> list[NodeWithScore]:
    """The fused ranking (at most `top_k` nodes), before the registry check."""
    factory = tenant.retriever_factory or default_retriever
    weight = blend.keyword_weight
    if weight <= 0.0:
        return list(factory(index, top_k).retrieve(query))
    # Never ask for more candidates than the tenant has chunks (the keyword index holds the
    # same chunks as the vectors): MMR, for one, warns and wastes work on a short store.
    depth = max(top_k, min(blend.candidates, len(keywords)))
    dense = [] if weight >= 1.0 else list(factory(index, depth).retrieve(query))
    keyword = keywords.search(query, depth)
    return fuse([(1.0 - weight, dense), (weight, keyword)], blend.rrf_k)[:top_k]


def fuse(
    rankings: Sequence[tuple[float, Sequence[NodeWithScore]]], rrf_k: int
) -> list[NodeWithScore]:
    """Weighted reciprocal rank fusion of rankings; the fused score replaces each node's."""
    from llama_index.core.schema import NodeWithScore

    scores: dict[str, float] = {}
    nodes: dict[str, NodeWithScore] = {}
    for weight, ranking in rankings:
        for rank_number, result in enumerate(ranking, start=1):
            node_id = result.node.node_id
            scores[node_id] = scores.get(node_id, 0.0) + weight / (rrf_k + rank_number)
            nodes.setdefault(node_id, result)  # the first ranking's copy of the node
    # sorted() is stable: ties keep the order of first appearance (dense first).
    order = sorted(scores, key=lambda node_id: -scores[node_id])
    return [NodeWithScore(node=nodes[i].node, score=scores[i]) for i in order]
