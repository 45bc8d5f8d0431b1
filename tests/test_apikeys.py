"""API keys: create (shown once), list, revoke, expiry, hash-only storage, tenant scope,
bearer use, and the operator CLI (audited as local:<os user>)."""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text, update

from core.auth import apikeys
from core.auth.sessions import utcnow
from core.db import session_scope
from core.errors import InvalidRequest, NotAuthenticated, NotFound
from tests.fixtures.common import REPO
from tests.fixtures.oidc import app_client, build_auth_app, make_auth_settings


@pytest.fixture
def auth_app(tmp_path: Path, oidc_issuer: str):
    return build_auth_app(make_auth_settings(tmp_path, oidc_issuer))


def test_only_the_hash_is_stored(auth_app) -> None:
    _, services = auth_app
    created = apikeys.create_key(services.settings, tenant_id="sales", created_by="t")
    assert created.secret.startswith(f"tlm_{created.key.id}_")
    with session_scope(services.settings.resolved_database_url) as db:
        dump = " ".join(str(v) for row in db.execute(text("SELECT * FROM api_keys")) for v in row)
    assert created.secret not in dump
    assert created.secret.split("_")[-1] not in dump
    assert apikeys.hash_key(created.secret) in dump


def test_list_revoke_and_tenant_scope(auth_app) -> None:
    _, services = auth_app
    s = services.settings
    sales = apikeys.create_key(s, tenant_id="sales", created_by="t", role="editor")
    finance = apikeys.create_key(s, tenant_id="finance", created_by="t")
    assert [k.id for k in apikeys.list_keys(s, "sales")] == [sales.key.id]
    assert {k.id for k in apikeys.list_keys(s)} == {sales.key.id, finance.key.id}
    # A team's editor revoking through its own team cannot reach another team's key.
    with pytest.raises(NotFound):
        apikeys.revoke_key(s, finance.key.id, tenant_id="sales")
    assert apikeys.verify_key(s, finance.secret).tenant_id == "finance"
    apikeys.revoke_key(s, sales.key.id, tenant_id="sales")
    with pytest.raises(NotAuthenticated, match="revoked"):
        apikeys.verify_key(s, sales.secret)
    with pytest.raises(NotFound):
        apikeys.revoke_key(s, "nope")


def test_expiry(auth_app) -> None:
    _, services = auth_app
    s = services.settings
    created = apikeys.create_key(s, tenant_id="sales", created_by="t", expires_in_days=30)
    assert apikeys.verify_key(s, created.secret).active
    with session_scope(s.resolved_database_url) as db:
        db.execute(
            update(apikeys.ApiKeyRow)
            .where(apikeys.ApiKeyRow.id == created.key.id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    with pytest.raises(NotAuthenticated, match="expired"):
        apikeys.verify_key(s, created.secret)


@pytest.mark.parametrize("bad", ["tlm_", "tlm_zzz", "sk-abc", "tlm_0123456789ab_" + "x" * 43])
def test_unknown_or_malformed_keys(auth_app, bad: str) -> None:
    with pytest.raises(NotAuthenticated):
        apikeys.verify_key(auth_app[1].settings, bad)


def test_durations() -> None:
    assert apikeys.parse_duration("30d") == timedelta(days=30)
    assert apikeys.parse_duration("12h") == timedelta(hours=12)
    for bad in ("", "0d", "30", "3y", "-1d"):
        with pytest.raises(InvalidRequest):
            apikeys.parse_duration(bad)


async def test_bearer_key_acts_for_its_tenant_only(auth_app) -> None:
    app, services = auth_app
    created = apikeys.create_key(services.settings, tenant_id="sales", created_by="t")
    async with app_client(app) as client:
        headers = {"Authorization": f"Bearer {created.secret}"}
        me = (await client.get("/v1/whoami", headers=headers)).json()
        assert me == {
            "subject": f"key:{created.key.id}",
            "kind": "api_key",
            "tenant_roles": {"sales": "member"},
            "global_roles": [],
        }
        apikeys.revoke_key(services.settings, created.key.id)
        refused = await client.get("/v1/whoami", headers=headers)
        assert refused.status_code == 401
        assert (
            await client.get("/v1/whoami", headers={"Authorization": "Bearer x"})
        ).status_code == 401
    assert services.auditor.actions("denied") == ["bearer_auth", "bearer_auth"]


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core.cli", "keys", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_create_list_revoke_is_audited(tmp_path: Path) -> None:
    from core.audit.auditor import AuditFilters, Auditor
    from core.config import Settings

    env = {**os.environ, "TENANTLLM_DATA_DIR": str(tmp_path)}
    made = _cli(env, "create", "--tenant", "finance", "--role", "editor", "--expires", "30d")
    assert made.returncode == 0, made.stderr
    secret = next(line.split()[-1] for line in made.stdout.splitlines() if "tlm_" in line)
    key_id = secret.split("_")[1]
    listed = _cli(env, "list")
    assert key_id in listed.stdout and "finance" in listed.stdout and secret not in listed.stdout
    assert _cli(env, "revoke", key_id).returncode == 0
    bad = _cli(env, "create", "--tenant", "nosuchteam")
    assert bad.returncode == 1 and "error:" in bad.stderr and "Traceback" not in bad.stderr
    settings = Settings(data_dir=tmp_path)
    with pytest.raises(NotAuthenticated):
        apikeys.verify_key(settings, secret)
    page = Auditor(settings).query(AuditFilters(), 1, 50)
    actor = f"local:{getpass.getuser()}"
    ops = sorted((e.action, e.user_sub) for e in page.rows)
    assert ops == [("api_key_create", actor), ("api_key_revoke", actor)]


async def test_two_apps_in_one_process_each_use_their_own_auth(
    tmp_path: Path, oidc_issuer: str
) -> None:
    # No process-wide auth state: the app built last must not decide for the one built first.
    first, first_services = build_auth_app(make_auth_settings(tmp_path / "a", oidc_issuer))
    second, second_services = build_auth_app(make_auth_settings(tmp_path / "b", oidc_issuer))
    assert first.state.auth is not second.state.auth
    keys = {
        "first": apikeys.create_key(first_services.settings, tenant_id="sales", created_by="t"),
        "second": apikeys.create_key(second_services.settings, tenant_id="finance", created_by="t"),
    }
    async with app_client(first) as one, app_client(second) as two:
        for client, own, other, tenant in ((one, "first", "second", "sales"),
                                           (two, "second", "first", "finance")):  # fmt: skip
            mine = await client.get(
                "/v1/whoami", headers={"Authorization": f"Bearer {keys[own].secret}"}
            )
            assert mine.status_code == 200 and mine.json()["tenant_roles"] == {tenant: "member"}
            theirs = await client.get(
                "/v1/whoami", headers={"Authorization": f"Bearer {keys[other].secret}"}
            )
            assert theirs.status_code == 401, theirs.text  # the other app's key store
    # Each app audits its own refusal, in its own log.
    for services in (first_services, second_services):
        assert services.auditor.actions("denied") == ["bearer_auth"]
