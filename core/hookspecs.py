"""The plugin contract of tenantllm (pluggy project name `tenantllm`).

Only signatures and docstrings live here. Plugins implement hooks with `@hookimpl`; the host
calls them with keyword arguments only. A plugin is a module (or an object with `__name__`)
registered by core/plugins.py: the built-in tenants from a list, third-party packages from
the entry-point group `tenantllm` (filtered by the `tenant_plugins` setting).
The README section "Writing a tenant plugin" repeats every signature (a test checks it).
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from core.tenancy import PromptDraft, Tenant

hookspec = pluggy.HookspecMarker("tenantllm")
hookimpl = pluggy.HookimplMarker("tenantllm")


@hookspec
def tenantllm_register_tenants(register: Callable[[Tenant], None]) -> None:
    """Declare the tenants this plugin provides by calling `register(Tenant(...))` once each.

    Called once at startup. The host checks every tenant when it is registered and stops
    startup with an error naming the plugin if the id is invalid or already taken, or the
    prompt template lacks a required variable. Return nothing.

    Example::

        @hookimpl
        def tenantllm_register_tenants(register):
            register(Tenant(id="legal", display_name="Legal", description="Contracts",
                            prompt=PromptTemplate(system="You are the legal team's assistant.")))
    """


@hookspec
def tenantllm_process_prompt(draft: PromptDraft) -> None:
    """Inspect, rewrite or refuse a prompt just before it is sent to the engine.

    Called for every chat turn of every tenant, after retrieval and template rendering.
    `draft.tenant` is the tenant being asked (check `draft.tenant.id` to act on your own
    tenant only), `draft.user` the caller's subject, `draft.question` the raw question and
    `draft.messages` the chat messages about to be sent. To rewrite, edit or replace
    `draft.messages` and append a short reason to `draft.flags` (it is audited); to refuse,
    raise `core.errors.PromptRejected("message for the user")`. Return nothing. Core's own
    implementation (credential redaction) is `trylast`, so plugins run before it.

    Example::

        @hookimpl
        def tenantllm_process_prompt(draft):
            if draft.tenant.id == "legal" and "privileged" in draft.question.lower():
                raise PromptRejected("Privileged matters are not discussed here.")
    """
