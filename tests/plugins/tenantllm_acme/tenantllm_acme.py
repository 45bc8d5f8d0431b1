"""The Acme legal team: a complete minimal third-party tenant plugin for tenantllm."""

from core.errors import PromptRejected
from core.hookspecs import hookimpl
from core.tenancy import PromptTemplate, Tenant


@hookimpl
def tenantllm_register_tenants(register):
    """Provide the `acme-legal` tenant."""
    register(
        Tenant(
            id="acme-legal",
            display_name="Acme Legal",
            description="Contracts, NDAs and compliance questions.",
            prompt=PromptTemplate(
                system="You are {tenant_name}'s assistant. Cite the clause you rely on.",
                user="Contracts:\n{context}\n\nQuestion: {question}",
            ),
            top_k=3,
        )
    )


@hookimpl
def tenantllm_process_prompt(draft):
    """Refuse questions about privileged matters, for this tenant only."""
    if draft.tenant.id == "acme-legal" and "privileged" in draft.question.lower():
        raise PromptRejected("Privileged matters are not discussed with the assistant.")
