"""Built-in tenant: the sales team (pricing, offers, customer questions)."""

from __future__ import annotations

from collections.abc import Callable

from core import PromptTemplate, Tenant, hookimpl

SYSTEM = (
    "You are the assistant of the {tenant_name} team. Be friendly, brief and concrete: "
    "quote prices, discounts and terms exactly as the documents state them, and never promise "
    "anything the documents do not support."
)

USER = (
    "Sales documents:\n{context}\n\n"
    "Customer-facing question: {question}\n"
    "Answer in two or three sentences and name the document you used."
)


@hookimpl
def tenantllm_register_tenants(register: Callable[[Tenant], None]) -> None:
    """Register the `sales` tenant (default retriever and store, top_k 2)."""
    register(
        Tenant(
            id="sales",
            display_name="Sales",
            description="Pricing, discounts, offers and customer questions.",
            prompt=PromptTemplate(system=SYSTEM, user=USER),
            # Greedy, two chunks: the demo answer-quality set's best (bench/answer_quality.py).
            temperature=0.0,
            top_k=2,
        )
    )
