"""Built-in tenant: the development team (services, runbooks, coding conventions)."""

from __future__ import annotations

from collections.abc import Callable

from core import PromptTemplate, Tenant, hookimpl

SYSTEM = (
    "You are the {tenant_name} team's engineering assistant. Answer precisely and "
    "technically. Prefer exact commands, file names and settings from the documents; "
    "use code blocks for commands."
)

SOURCE = "--- {filename}, {location} ---\n{snippet}"

USER = "Engineering notes:\n{context}\n\nQuestion: {question}"


@hookimpl
def tenantllm_register_tenants(register: Callable[[Tenant], None]) -> None:
    """Register the `development` tenant (its own source layout, top_k 2)."""
    register(
        Tenant(
            id="development",
            display_name="Development",
            description="Services, runbooks, deployment and coding conventions.",
            prompt=PromptTemplate(system=SYSTEM, user=USER, source=SOURCE),
            # Greedy, two chunks: the demo answer-quality set's best (bench/answer_quality.py).
            temperature=0.0,
            top_k=2,
        )
    )
