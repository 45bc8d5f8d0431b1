"""The one PluginManager: built-in tenants, allow-listed third-party tenants, prompt hooks.

Built-in behaviour is written as ordinary plugins, registered from `BUILTIN_PLUGINS`
(datasette/llm style). Third-party packages declare an entry point in the group `tenantllm`;
they run arbitrary code, so only those named in the `tenant_plugins` setting are imported.
Under pytest (`sys._called_from_test`) entry points are not loaded implicitly: tests load
plugins explicitly. Every startup failure is a ConfigError that names the plugin at fault.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata
import logging
import sys
from collections.abc import Callable

import pluggy

from core import hookspecs
from core.config import Settings
from core.errors import ConfigError
from core.tenancy import PromptDraft, Tenant, TenantRegistry

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "tenantllm"

#: Built-in plugins, registered in this order under their module name.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "core.redaction",
    "tenant_plugins.sales",
    "tenant_plugins.development",
    "tenant_plugins.finance",
)

pm = pluggy.PluginManager("tenantllm")
pm.add_hookspecs(hookspecs)
_packages: dict[str, str] = {}  # entry-point name -> "dist==version"


def _register(plugin: object, name: str) -> None:
    """Register one plugin, turning pluggy's validation errors into a ConfigError naming it."""
    if pm.has_plugin(name):
        return
    try:
        pm.register(plugin, name=name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        raise ConfigError(f"Tenant plugin {name!r} is invalid: {exc}") from exc


def _import_plugin(name: str, load: Callable[[], object]) -> object:
    # A plugin that raises on import must stop startup with its name, not a bare traceback.
    try:
        return load()
    except Exception as exc:
        raise ConfigError(
            f"Tenant plugin {name!r} failed to import: {type(exc).__name__}: {exc}"
        ) from exc


def _load_builtins() -> None:
    for module_name in BUILTIN_PLUGINS:
        if pm.has_plugin(module_name):
            continue
        module = _import_plugin(
            module_name, functools.partial(importlib.import_module, module_name)
        )
        _register(module, module_name)


def _load_entry_points(allowed: list[str]) -> None:
    """Import and register the allow-listed entry points of group `tenantllm`."""
    found = {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    for name in allowed:
        ep = found.get(name)
        if ep is None:
            raise ConfigError(
                f"Tenant plugin {name!r} is allowed in TENANTLLM_TENANT_PLUGINS but no "
                f"installed package provides it (entry-point group {ENTRY_POINT_GROUP!r})."
            )
        if pm.has_plugin(name):
            continue
        _register(_import_plugin(name, ep.load), name)
        if ep.dist is not None:
            _packages[name] = f"{ep.dist.name}=={ep.dist.version}"
    for name in sorted(set(found) - set(allowed)):
        log.info("tenant plugin %r is installed but not allowed; not loaded", name)


def load_plugins(settings: Settings) -> None:
    """Register built-ins and allowed third-party plugins (idempotent), then check hook names."""
    _load_builtins()
    if not getattr(sys, "_called_from_test", False):
        _load_entry_points(settings.tenant_plugins)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise ConfigError(f"Tenant plugin {plugin_name(exc.plugin)!r} is invalid: {exc}") from exc


def plugin_name(plugin: object) -> str:
    """The name a plugin is registered under (its module or entry-point name)."""
    return pm.get_name(plugin) or str(getattr(plugin, "__name__", repr(plugin)))


def plugin_package(name: str) -> str:
    """`dist==version` of the package that provides plugin `name` ("built-in" for ours)."""
    if name in BUILTIN_PLUGINS:
        return "built-in"
    return _packages.get(name, "unknown")


def _collect_tenants() -> list[Tenant]:
    tenants: dict[str, Tenant] = {}
    # Each implementation is called on its own so every tenant is attributed to its plugin,
    # in registration order: built-ins first, so a later plugin reusing their id is blamed.
    for impl in pm.hook.tenantllm_register_tenants.get_hookimpls():
        name = impl.plugin_name

        def register(tenant: Tenant, _plugin: str = name) -> None:
            _check_tenant(tenant, _plugin, tenants)
            if not tenant.prompt.tenant_name:
                prompt = dataclasses.replace(tenant.prompt, tenant_name=tenant.display_name)
                tenant = dataclasses.replace(tenant, prompt=prompt)
            tenants[tenant.id] = dataclasses.replace(tenant, plugin=_plugin)

        try:
            impl.function(register=register)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"Tenant plugin {name!r} failed while registering tenants: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    return list(tenants.values())


def _check_tenant(tenant: object, plugin: str, seen: dict[str, Tenant]) -> None:
    if not isinstance(tenant, Tenant):
        raise ConfigError(
            f"Tenant plugin {plugin!r} registered {type(tenant).__name__}, not core.tenancy.Tenant."
        )
    problems = tenant.problems()
    if problems:
        raise ConfigError(f"Tenant plugin {plugin!r}, tenant {tenant.id!r}: " + "; ".join(problems))
    if tenant.id in seen:
        raise ConfigError(
            f"Tenant plugin {plugin!r} registers tenant id {tenant.id!r}, already registered by "
            f"plugin {seen[tenant.id].plugin!r}."
        )


def load_tenants(settings: Settings) -> TenantRegistry:
    """Load the plugins and collect their tenants; raises ConfigError naming the plugin."""
    load_plugins(settings)
    tenants = _collect_tenants()
    if not tenants:
        raise ConfigError("No tenant is registered: check TENANTLLM_TENANT_PLUGINS.")
    return TenantRegistry(tenants)


def process_prompt(
    tenant: Tenant, user: str, question: str, messages: list[dict[str, str]]
) -> PromptDraft:
    """Run every `tenantllm_process_prompt` hook over a copy of `messages`.

    Returns the draft (possibly rewritten messages, and flags for the audit log); raises
    `PromptRejected` when a plugin refuses the prompt.
    """
    draft = PromptDraft(
        tenant=tenant, user=user, question=question, messages=[dict(m) for m in messages]
    )
    pm.hook.tenantllm_process_prompt(draft=draft)
    return draft
