"""Plugins: built-ins load, every startup error names the plugin at fault, prompt hooks,
the hook docs in the README, and a real external package installed, allowed and loaded."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core import hookspecs, plugins
from core.config import Settings
from core.errors import ConfigError, PromptRejected
from core.hookspecs import hookimpl
from core.plugins import load_tenants, pm, process_prompt
from core.tenancy import PromptTemplate, Source, Tenant

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)


@pytest.fixture
def register_plugin() -> Iterator[Any]:
    """Register one-off plugin objects under a name; always unregistered afterwards."""
    names: list[str] = []

    def register(plugin: object, name: str) -> None:
        pm.register(plugin, name=name)
        names.append(name)

    try:
        yield register
    finally:
        for name in names:
            if pm.has_plugin(name):
                pm.unregister(name=name)


def tenant(tenant_id: str, **prompt: str) -> Tenant:
    return Tenant(
        id=tenant_id,
        display_name=tenant_id.title(),
        description="test tenant",
        prompt=PromptTemplate(system="You help {tenant_name}.", **prompt),
    )


class TenantsPlugin:
    """A plugin object registering the given tenants (or raising)."""

    def __init__(self, *tenants: object, error: Exception | None = None) -> None:
        self.tenants, self.error = tenants, error

    @hookimpl
    def tenantllm_register_tenants(self, register: Any) -> None:
        if self.error:
            raise self.error
        for t in self.tenants:
            register(t)


def test_builtin_tenants_load_with_their_plugin(settings: Settings) -> None:
    registry = load_tenants(settings)
    assert [t.id for t in registry.all()] == ["development", "finance", "sales"]
    for t in registry.all():
        assert t.plugin == f"tenant_plugins.{t.id}"
        assert plugins.plugin_package(t.plugin) == "built-in"
    assert registry.get("finance").retriever_factory is not None  # the override is real


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        (TenantsPlugin(tenant("sales")), "already registered by plugin 'tenant_plugins.sales'"),
        (TenantsPlugin(tenant("Bad Id!")), "invalid tenant id 'Bad Id!'"),
        (TenantsPlugin(tenant("x")), "invalid tenant id 'x'"),
        (TenantsPlugin(tenant("legal", user="{context} only")), "missing variable {question}"),
        (TenantsPlugin(tenant("legal", user="{context}{question}{secret}")), "unknown variable"),
        (TenantsPlugin(tenant("legal", source="{filename}")), "missing variable {snippet}"),
        (TenantsPlugin("not a tenant"), "registered str, not core.tenancy.Tenant"),
        (TenantsPlugin(error=KeyError("db")), "failed while registering tenants: KeyError"),
    ],
    ids=[
        "duplicate",
        "invalid-id",
        "short-id",
        "no-question",
        "unknown-var",
        "no-snippet",
        "wrong-type",
        "raises",
    ],  # fmt: skip
)
def test_bad_tenant_stops_startup_naming_the_plugin(
    settings: Settings, register_plugin: Any, plugin: object, message: str
) -> None:
    register_plugin(plugin, "acme-broken")
    with pytest.raises(ConfigError) as caught:
        load_tenants(settings)
    assert "'acme-broken'" in str(caught.value) and message in str(caught.value)


def test_duplicate_inside_one_plugin_is_refused(settings: Settings, register_plugin: Any) -> None:
    register_plugin(TenantsPlugin(tenant("legal"), tenant("legal")), "acme-twice")
    with pytest.raises(ConfigError, match="'acme-twice' registers tenant id 'legal', already"):
        load_tenants(settings)


def test_hook_name_typo_stops_startup_naming_the_plugin(
    settings: Settings, register_plugin: Any
) -> None:
    class Typo:
        @hookimpl
        def tenantllm_register_tenant(self, register: Any) -> None:  # missing "s"
            register(tenant("legal"))

    register_plugin(Typo(), "acme-typo")
    with pytest.raises(ConfigError, match="'acme-typo'.*unknown hook 'tenantllm_register_tenant'"):
        load_tenants(settings)


def test_hook_argument_not_in_spec_names_the_plugin() -> None:
    class WrongArgs:
        @hookimpl
        def tenantllm_register_tenants(self, register: Any, datasette: Any) -> None: ...

    with pytest.raises(ConfigError, match="'acme-args' is invalid"):
        plugins._register(WrongArgs(), "acme-args")
    assert not pm.has_plugin("acme-args")


def test_plugin_that_raises_on_import_stops_startup_naming_it(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = "tests.plugins.broken_on_import"
    monkeypatch.setattr(plugins, "BUILTIN_PLUGINS", (*plugins.BUILTIN_PLUGINS, broken))
    with pytest.raises(ConfigError) as caught:
        load_tenants(settings)
    assert f"'{broken}' failed to import" in str(caught.value)
    assert "license server unreachable" in str(caught.value)
    assert not pm.has_plugin(broken)


def test_allowed_plugin_that_is_not_installed_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'ghost' is allowed .* no installed package"):
        plugins._load_entry_points(["ghost"])


def test_prompt_hooks_rewrite_reject_then_core_redacts(
    settings: Settings, register_plugin: Any
) -> None:
    class Legal:
        @hookimpl
        def tenantllm_process_prompt(self, draft: Any) -> None:
            if draft.tenant.id != "sales":
                return
            if "privileged" in draft.question:
                raise PromptRejected("Not here.")
            draft.messages[-1]["content"] = draft.messages[-1]["content"].replace(
                "ACME", "[client]"
            )
            draft.flags.append("client-name")

    register_plugin(Legal(), "acme-legal-hooks")
    registry = load_tenants(settings)
    sales, finance = registry.get("sales"), registry.get("finance")
    messages = sales.prompt.render(
        question="ACME asks: is tlm_abcdefghijklmnop1234 valid?", sources=[], history=[]
    )
    draft = process_prompt(sales, "local:test", "ACME asks", messages)
    assert (
        "ACME" not in draft.messages[-1]["content"] and "[client]" in draft.messages[-1]["content"]
    )
    assert "tlm_abcdefghijklmnop1234" not in draft.messages[-1]["content"]
    assert draft.flags == ["client-name", "redacted"]
    assert "ACME" in messages[-1]["content"]  # the caller's list is not mutated
    with pytest.raises(PromptRejected):
        process_prompt(sales, "local:test", "privileged?", messages)
    other = process_prompt(finance, "local:test", "privileged?", messages)
    assert "ACME" in other.messages[-1]["content"]  # the plugin only acts on its tenant


def test_template_renders_sources_history_and_question_in_order() -> None:
    template = PromptTemplate(system="Voice of {tenant_name}.", tenant_name="Sales")
    source = Source("d1", "prices.md", "section: Plans", "Team costs EUR 199 {question}", 0.9)
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    messages = template.render(
        question="What does {context} cost?", sources=[source], history=history
    )
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"] == "Voice of Sales."
    last = messages[-1]["content"]
    # User text and document text are substituted verbatim, never parsed as templates.
    assert "[1] prices.md (section: Plans):\nTeam costs EUR 199 {question}" in last
    assert last.endswith("Question: What does {context} cost?")
    empty = template.render(question="q", sources=[], history=[])
    assert template.no_context in empty[-1]["content"]


def _readme_plugins_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("<!-- section:plugins:start -->")
    return text[start : text.index("<!-- section:plugins:end -->")]


def _hook_signature(name: str, func: Any) -> str:
    sig = inspect.signature(func)
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"def {name}({params}) -> {sig.return_annotation}:"


def test_every_hook_is_documented_with_its_exact_signature() -> None:
    section = _readme_plugins_section()
    hooks = {n: f for n, f in vars(hookspecs).items() if n.startswith("tenantllm_")}
    assert set(hooks) == {"tenantllm_register_tenants", "tenantllm_process_prompt"}
    for name, func in hooks.items():
        assert _hook_signature(name, func) in section, name
        assert func.__doc__ and "Example::" in func.__doc__, name


def test_readme_example_is_the_tested_package() -> None:
    section = _readme_plugins_section()
    package = REPO / "tests" / "plugins" / "tenantllm_acme"
    for name in ("pyproject.toml", "tenantllm_acme.py"):
        assert (package / name).read_text().strip() in section, name


def _cli_tenants(allowed: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TENANTLLM_TENANT_PLUGINS": json.dumps(allowed)}
    # A separate process: there, entry points are loaded as in production.
    return subprocess.run(
        [sys.executable, "-m", "core.cli", "tenants", "--json"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_external_plugin_package_installs_and_loads_when_allowed(tmp_path: Path) -> None:
    source = tmp_path / "tenantllm-acme"
    shutil.copytree(REPO / "tests" / "plugins" / "tenantllm_acme", source)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-build-isolation", str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    try:
        loaded = _cli_tenants(["acme"])
        assert loaded.returncode == 0, loaded.stderr
        rows = {row["id"]: row for row in json.loads(loaded.stdout)}
        assert rows["acme-legal"]["plugin"] == "acme"
        assert rows["acme-legal"]["package"] == "tenantllm-acme==0.1.0"
        assert {"sales", "development", "finance"} <= set(rows)

        not_allowed = _cli_tenants([])
        assert not_allowed.returncode == 0, not_allowed.stderr
        assert "acme-legal" not in {row["id"] for row in json.loads(not_allowed.stdout)}
    finally:
        subprocess.run([*pip, "uninstall", "-y", "tenantllm-acme"], check=True, timeout=300)
    gone = _cli_tenants(["acme"])
    assert gone.returncode == 1 and "'acme' is allowed" in gone.stderr


def test_plugin_authors_import_root_and_long_paths_name_the_same_objects() -> None:
    import core
    from core import errors, tenancy

    assert core.hookimpl is hookspecs.hookimpl
    assert core.Tenant is tenancy.Tenant
    assert core.PromptTemplate is tenancy.PromptTemplate
    assert core.PromptDraft is tenancy.PromptDraft
    assert core.PromptRejected is errors.PromptRejected
