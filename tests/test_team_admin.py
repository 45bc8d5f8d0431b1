"""Team admins (issue 15, item 3): a sales team admin gets sales, and nothing of finance.

From the IdP group (a real sign-in of the demo user `tess`), through the one `authorize()`,
to what each query returns: the audit log's slice (sales rows only: no finance row and no
global row without a tenant), API keys, member budgets within the team's grant, usage. The
Gradio events and the CLI are checked against the running app in
tests/security/test_output_scoping.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.audit.auditor import AuditEvent, Auditor
from core.audit.query import AuditFilters, export_csv, query, scoped_to
from core.auth import apikeys
from core.budgets.admin import budget_report, check_budget_change, set_budget
from core.config import Settings
from core.errors import InvalidRequest, NotFound, PermissionDenied
from core.identity import Principal
from core.rbac import allowed_tenants, operator_principal
from tests.audit_helpers import pg_database, settings_for, sqlite_url
from tests.fixtures.oidc import app_client, build_auth_app, login, make_auth_settings

TESS = Principal("sub-tess", "tess@example.com", "user", {"sales": "team_admin"})
ERIN = Principal("sub-erin", "erin@example.com", "user", {"sales": "editor"})


async def test_the_demo_team_admin_signs_in_as_team_admin_of_sales(
    tmp_path: Path, oidc_issuer: str
) -> None:
    app, _ = build_auth_app(make_auth_settings(tmp_path, oidc_issuer))
    async with app_client(app) as client:
        assert (await login(client, "tess")).status_code == 302
        me = (await client.get("/whoami")).json()
        assert (me["tenant_roles"], me["global_roles"]) == ({"sales": "team_admin"}, [])
        assert (await client.get("/teams/sales/read_usage")).status_code == 200
        assert (await client.get("/teams/finance/read_usage")).status_code == 403
        assert (await client.get("/teams/-/read_audit")).status_code == 403
        assert (await client.get("/teams/sales/manage_team_budget")).status_code == 403


# --- the audit log's slice ------------------------------------------------------------------


def _log(settings: Settings) -> None:
    auditor = Auditor(settings)
    for tenant in ("sales", "finance", None):
        for action in ("chat", "ui_upload", "login"):
            auditor.record(
                AuditEvent(
                    action=action, outcome="ok", tenant_id=tenant,
                    user_sub=f"{tenant or 'global'}-user", detail=f"{tenant or 'global'}-row",
                )
            )  # fmt: skip
    auditor.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def audit_url(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        url = sqlite_url(tmp_path)
        _log(settings_for(tmp_path, url))
        yield url
        return
    with pg_database("tlm_teamadmin") as url:
        _log(settings_for(tmp_path, url))
        yield url


def test_a_team_admin_reads_only_their_teams_rows(audit_url: str) -> None:
    scope = allowed_tenants(TESS, "read_audit")
    page = query(audit_url, scoped_to(AuditFilters(), scope), 1, 100)
    assert page.total == 3 and {r.tenant_id for r in page.rows} == {"sales"}
    csv_text = export_csv(audit_url, scoped_to(AuditFilters(), scope))
    assert "sales-row" in csv_text
    assert "finance" not in csv_text and "global" not in csv_text
    # Another team asked for inside the sales scope: nothing (the UI refuses it before).
    finance = scoped_to(AuditFilters(tenant_id="finance"), scope)
    assert query(audit_url, finance, 1, 100).rows == []


def test_auditors_and_no_scope(audit_url: str) -> None:
    auditor = Principal("a", None, "user", {}, frozenset({"auditor"}))
    every = scoped_to(AuditFilters(), allowed_tenants(auditor, "read_audit"))
    assert query(audit_url, every, 1, 100).total == 9  # global rows included
    nobody = scoped_to(AuditFilters(), allowed_tenants(ERIN, "read_audit"))
    assert nobody.tenant_ids == () and query(audit_url, nobody, 1, 100).rows == []


# --- API keys -----------------------------------------------------------------------------


def test_a_team_admin_manages_their_teams_keys_only(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, sqlite_url(tmp_path))
    sales = apikeys.create_key(settings, tenant_id="sales", created_by=TESS.subject)
    finance = apikeys.create_key(settings, tenant_id="finance", created_by="root")
    assert [k.id for k in apikeys.visible_keys(settings, TESS)] == [sales.key.id]
    assert apikeys.visible_keys(settings, TESS, "finance") == []
    with pytest.raises(NotFound):
        apikeys.revoke_key(settings, finance.key.id, principal=TESS)
    assert apikeys.revoke_key(settings, sales.key.id, principal=TESS).revoked_at is not None
    assert apikeys.list_keys(settings, "finance")[0].revoked_at is None


# --- budgets within the team's grant -------------------------------------------------------


def test_member_budgets_fit_under_the_grant(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    admin = operator_principal()
    check_budget_change(url, admin, "sales", {"daily": 10_000}, user=None)
    set_budget(url, "sales", {"daily": 10_000}, user=None, actor="root")
    # A team admin sets a member's budget and the default per member, under the grant ...
    for changes, user in (({"daily": 4_000}, "sub-ann"), ({"member_daily": 2_000}, None)):
        check_budget_change(url, TESS, "sales", changes, user=user)
    check_budget_change(url, TESS, "sales", {"monthly": None}, user="sub-ann")  # off: fits
    check_budget_change(url, TESS, "sales", {"monthly": 10**9}, user="sub-ann")  # no ceiling
    # ... never above it, never the team's own budget, never another team's.
    with pytest.raises(InvalidRequest, match="10,000"):
        check_budget_change(url, TESS, "sales", {"daily": 10_001}, user="sub-ann")
    with pytest.raises(InvalidRequest, match="fit under"):
        check_budget_change(url, TESS, "sales", {"member_daily": 20_000}, user=None)
    with pytest.raises(PermissionDenied, match="team budget of the team 'sales'"):
        check_budget_change(url, TESS, "sales", {"daily": 20_000}, user=None)
    with pytest.raises(PermissionDenied, match="finance"):
        check_budget_change(url, TESS, "finance", {"daily": 1}, user="sub-fay")
    with pytest.raises(PermissionDenied):
        check_budget_change(url, ERIN, "sales", {"daily": 1}, user="sub-ann")  # an editor
    # The admin grants: no ceiling for them; the refusals changed nothing.
    check_budget_change(url, admin, "sales", {"daily": 50_000}, user="sub-ann")
    assert [(r.subject, r.daily) for r in budget_report(url, "sales")] == [("*", 10_000)]
