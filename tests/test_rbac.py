"""The RBAC matrix: every role x every action x own tenant / other tenant / no tenant.

The expected table is written out by hand (not derived from core/rbac.py), then checked
through `authorize` and through the HTTP entry points with real sign-ins and API keys.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core.auth import apikeys
from core.errors import PermissionDenied
from core.identity import Principal
from core.rbac import ACTIONS, authorize, operator_principal
from tests.fixtures.oidc import app_client, build_auth_app, login, make_auth_settings

OWN, OTHER = "sales", "finance"
ALL = set(ACTIONS)

# role -> {tenant scope -> allowed actions}
EXPECTED: dict[str, dict[str | None, set[str]]] = {
    "member": {OWN: {"chat", "read_documents"}, OTHER: set(), None: set()},
    "editor": {
        OWN: {"chat", "read_documents", "upload", "delete_document", "manage_keys"},
        OTHER: set(),
        None: set(),
    },
    # Issue 15, item 3: editor + the team's usage, member budgets and audit slice; never the
    # team's own budget, never another team, never the global rows (None).
    "team_admin": {
        OWN: {
            "chat",
            "read_documents",
            "upload",
            "delete_document",
            "manage_keys",
            "read_usage",
            "manage_member_budgets",
            "read_audit",
        },
        OTHER: set(),
        None: set(),
    },  # fmt: skip
    "auditor": {OWN: {"read_audit"}, OTHER: {"read_audit"}, None: {"read_audit"}},
    "admin": {OWN: ALL, OTHER: ALL, None: ALL},
    "nobody": {OWN: set(), OTHER: set(), None: set()},
    "key-member": {OWN: {"chat", "read_documents"}, OTHER: set(), None: set()},
    "key-editor": {
        OWN: {"chat", "read_documents", "upload", "delete_document"},  # keys never mint keys
        OTHER: set(),
        None: set(),
    },
}


def principal_for(role: str) -> Principal:
    kind = "api_key" if role.startswith("key-") else "user"
    tenant_role = role.removeprefix("key-")
    tenant_roles = {OWN: tenant_role} if tenant_role in ("member", "editor", "team_admin") else {}
    global_roles = frozenset({role}) if role in ("auditor", "admin") else frozenset()
    return Principal(role, None, kind, tenant_roles, global_roles)  # type: ignore[arg-type]


def _allowed(principal: Principal, tenant: str | None, action: str) -> bool:
    try:
        authorize(principal, tenant, action)  # type: ignore[arg-type]
    except PermissionDenied:
        return False
    return True


@pytest.mark.parametrize("role", sorted(EXPECTED))
@pytest.mark.parametrize("tenant", [OWN, OTHER, None])
def test_matrix_through_authorize(role: str, tenant: str | None) -> None:
    principal = principal_for(role)
    allowed = {a for a in ACTIONS if _allowed(principal, tenant, a)}
    assert allowed == EXPECTED[role][tenant]


def test_unknown_action_is_refused() -> None:
    with pytest.raises(PermissionDenied):
        authorize(principal_for("editor"), OWN, "drop_tables")  # type: ignore[arg-type]


def test_operator_is_a_local_admin() -> None:
    operator = operator_principal()
    assert operator.kind == "local" and operator.subject.startswith("local:")
    assert all(_allowed(operator, t, a) for a in ACTIONS for t in (OWN, OTHER, None))


# Demo users (real sign-in) standing for each role; "zed" has no known group.
PEOPLE = {
    "alice": "member",
    "erin": "editor",
    "tess": "team_admin",
    "audrey": "auditor",
    "root": "admin",
}


async def test_matrix_through_http_with_real_sign_ins(tmp_path: Path, oidc_issuer: str) -> None:
    app, services = build_auth_app(make_auth_settings(tmp_path, oidc_issuer))
    for user, role in PEOPLE.items():
        async with app_client(app) as client:
            assert (await login(client, user)).status_code == 302
            for tenant in (OWN, OTHER, None):
                for action in ACTIONS:
                    path = f"/teams/{tenant or '-'}/{action}"
                    status = (await client.get(path)).status_code
                    expected = 200 if action in EXPECTED[role][tenant] else 403
                    assert status == expected, (user, tenant, action, status)
    async with app_client(app) as anonymous:
        assert (await anonymous.get(f"/teams/{OWN}/chat")).status_code == 401


async def test_api_keys_through_bearer(tmp_path: Path, oidc_issuer: str) -> None:
    app, services = build_auth_app(make_auth_settings(tmp_path, oidc_issuer))
    for role in ("member", "editor"):
        created = apikeys.create_key(services.settings, tenant_id=OWN, role=role, created_by="t")
        async with app_client(app) as client:
            me = await client.get(
                "/v1/whoami", headers={"Authorization": f"Bearer {created.secret}"}
            )
        principal = Principal(me.json()["subject"], None, "api_key", me.json()["tenant_roles"])
        for tenant in (OWN, OTHER, None):
            allowed = {a for a in ACTIONS if _allowed(principal, tenant, a)}
            assert allowed == EXPECTED[f"key-{role}"][tenant]


def test_allowed_tenants_is_the_scope_queries_filter_by() -> None:
    from core.rbac import allowed_tenants

    team_admin = Principal("t", None, "user", {OWN: "team_admin", OTHER: "member"})
    assert allowed_tenants(team_admin, "read_audit") == [OWN]
    assert allowed_tenants(team_admin, "read_usage") == [OWN]
    assert allowed_tenants(team_admin, "chat") == [OTHER, OWN]
    assert allowed_tenants(principal_for("editor"), "read_usage") == []
    assert allowed_tenants(principal_for("auditor"), "read_audit") is None  # every row
    assert allowed_tenants(principal_for("auditor"), "read_usage") == []
    assert allowed_tenants(principal_for("admin"), "read_usage") is None


def test_no_api_key_is_a_team_admin(tmp_path: Path) -> None:
    from core.config import Settings
    from core.db import upgrade_database
    from core.errors import InvalidRequest

    settings = Settings(data_dir=tmp_path)
    upgrade_database(settings.resolved_database_url)
    with pytest.raises(InvalidRequest, match="member, editor"):
        apikeys.create_key(settings, tenant_id=OWN, role="team_admin", created_by="t")
    assert apikeys.list_keys(settings) == []


# --- the group mapping file ------------------------------------------------------------------


def _mapping(tmp_path: Path, body: str):
    from core.auth.group_mapping import GroupMapping
    from core.config import Settings

    path = tmp_path / "mapping.yaml"
    path.write_text(body)
    return path, GroupMapping(Settings(data_dir=tmp_path, group_mapping_file=path))


def test_default_mapping_and_strongest_role(tmp_path: Path) -> None:
    from core.auth.group_mapping import GroupMapping
    from core.config import Settings

    mapping = GroupMapping(Settings(data_dir=tmp_path))  # assets/group_mapping.yaml
    assert mapping.resolve(["sales", "sales-editors", "auditors", "made-up"]) == (
        {"sales": "editor"},
        frozenset({"auditor"}),
    )
    assert mapping.resolve(["SALES", "sales ", "admin"]) == ({}, frozenset())
    assert mapping.resolve(["sales-editors", "sales-admins"])[0] == {"sales": "team_admin"}
    assert ("admins", None, "admin") in {(r.group, r.tenant, r.role) for r in mapping.rules()}


def test_mapping_is_reread_when_the_file_changes(tmp_path: Path) -> None:
    path, mapping = _mapping(tmp_path, "groups:\n  g: {tenants: {sales: member}}\n")
    assert mapping.resolve(["g"])[0] == {"sales": "member"}
    path.write_text("groups:\n  g: {tenants: {finance: editor}}\n  h: {global: [auditor]}\n")
    assert mapping.resolve(["g", "h"]) == ({"finance": "editor"}, frozenset({"auditor"}))


def test_broken_file_keeps_the_previous_mapping(tmp_path: Path) -> None:
    from core.errors import ConfigError

    path, mapping = _mapping(tmp_path, "groups:\n  g: {tenants: {sales: member}}\n")
    path.write_text("groups:\n  g: {tenants: {sales: owner}}\n")  # not a role
    assert mapping.resolve(["g"])[0] == {"sales": "member"}
    path.write_text("groups: [unclosed\n")
    assert mapping.resolve(["g"])[0] == {"sales": "member"}
    with pytest.raises(ConfigError, match="owner"):
        _mapping(tmp_path, "groups:\n  g: {tenants: {sales: owner}}\n")
    with pytest.raises(ConfigError, match="global role"):
        _mapping(tmp_path, "groups:\n  g: {global: [root]}\n")


def test_sighup_rereads_the_mapping(tmp_path: Path) -> None:
    import os
    import signal

    path, mapping = _mapping(tmp_path, "groups:\n  g: {tenants: {sales: member}}\n")
    stat = path.stat()
    previous = signal.getsignal(signal.SIGHUP)
    try:
        assert mapping.install_sighup()
        # Same size, same mtime: a change the file check cannot see ...
        path.write_text("groups:\n  g: {tenants: {sales: editor}}\n")
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert mapping.resolve(["g"])[0] == {"sales": "member"}
        # ... is picked up on SIGHUP.
        os.kill(os.getpid(), signal.SIGHUP)
        assert mapping.resolve(["g"])[0] == {"sales": "editor"}
    finally:
        signal.signal(signal.SIGHUP, previous)
