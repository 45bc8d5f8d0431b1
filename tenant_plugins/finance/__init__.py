"""Built-in tenant: the finance team (budgets, expenses, reporting).

Finance overrides the retriever: Maximal Marginal Relevance, so that one question about a
figure gets several different passages (policy, table, exception) instead of near-copies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from core import PromptTemplate, Tenant, hookimpl

if TYPE_CHECKING:
    from llama_index.core import VectorStoreIndex
    from llama_index.core.retrievers import BaseRetriever

SYSTEM = (
    "You are the {tenant_name} team's assistant. Be exact and conservative: quote figures "
    "with their currency and period, cite the source number like [1], and say clearly when "
    "the documents do not give a figure. Never estimate numbers."
)

SOURCE = "[{n}] {filename}, {location}\n{snippet}"

USER = "Finance records:\n{context}\n\nQuestion: {question}\nCite sources as [n]."

# 0 = only diversity, 1 = only relevance; finance wants mostly relevance.
MMR_THRESHOLD = 0.7


def mmr_retriever(index: VectorStoreIndex, top_k: int) -> BaseRetriever:
    """Retriever over finance's own index using Maximal Marginal Relevance."""
    return index.as_retriever(
        similarity_top_k=top_k,
        vector_store_query_mode="mmr",
        vector_store_kwargs={"mmr_threshold": MMR_THRESHOLD},
    )


@hookimpl
def tenantllm_register_tenants(register: Callable[[Tenant], None]) -> None:
    """Register the `finance` tenant, with its MMR retriever and top_k 2."""
    register(
        Tenant(
            id="finance",
            display_name="Finance",
            description="Budgets, expense policy, invoices and quarterly reporting.",
            prompt=PromptTemplate(system=SYSTEM, user=USER, source=SOURCE),
            # Greedy, two chunks: the demo answer-quality set's best (bench/answer_quality.py).
            temperature=0.0,
            top_k=2,
            retriever_factory=mmr_retriever,
        )
    )
