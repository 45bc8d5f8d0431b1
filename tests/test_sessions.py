"""Server-side sessions: a new id at every sign-in, sign-out kills copies of the cookie, and
groups follow the IdP (refreshed every `groups_refresh_seconds`, not frozen at sign-in)."""

from __future__ import annotations

import base64
import json
import re
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import update

from core.auth.demo_idp import DEMO_USERS
from core.auth.sessions import AuthSessionRow, session_id_of, sessions_of, utcnow
from core.db import session_scope
from tests.fixtures.oidc import app_client, build_auth_app, login, make_auth_settings, set_idp_user


def _sid(client) -> str:
    payload = client.cookies["tenantllm_session"].split(".")[0]
    data = json.loads(base64.b64decode(payload + "=" * (-len(payload) % 4)))
    assert set(data) <= {"sid", "sub"}, data  # the cookie holds nothing else
    return data["sid"]


def _age_groups(settings, subject: str, seconds: int) -> None:
    """Pretend the groups were read `seconds` ago (instead of sleeping through the interval)."""
    with session_scope(settings.resolved_database_url) as db:
        db.execute(
            update(AuthSessionRow)
            .where(AuthSessionRow.subject == subject)
            .values(groups_refreshed_at=utcnow() - timedelta(seconds=seconds))
        )


async def test_session_id_changes_at_every_sign_in(tmp_path: Path, oidc_issuer: str) -> None:
    app, services = build_auth_app(make_auth_settings(tmp_path, oidc_issuer))
    async with app_client(app) as client:
        await login(client, "alice")
        first = _sid(client)
        old_cookie = client.cookies["tenantllm_session"]
        await login(client, "alice")
        second = _sid(client)
        assert first != second
        # The previous session ended with the new sign-in: its cookie is dead.
        assert sessions_of(services.settings, "alice") == [session_id_of(second)]
    async with app_client(app) as replay:
        replay.cookies.set("tenantllm_session", old_cookie)
        assert (await replay.get("/whoami")).status_code == 401


async def test_logout_kills_copies_of_the_cookie(tmp_path: Path, oidc_issuer: str) -> None:
    app, services = build_auth_app(make_auth_settings(tmp_path, oidc_issuer))
    async with app_client(app) as client:
        await login(client, "erin")
        copied = client.cookies["tenantllm_session"]
        # GET /logout only shows the form; POST with its CSRF token signs out.
        page = await client.get("/logout", follow_redirects=False)
        token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
        assert page.status_code == 200 and token, page.text
        out = await client.post(
            "/logout", data={"csrf_token": token.group(1)}, follow_redirects=False
        )
        # RP-initiated logout at the provider, coming back to our signed-out page.
        assert out.status_code == 303
        target = urlsplit(out.headers["location"])
        assert f"{target.scheme}://{target.netloc}" == oidc_issuer
        params = parse_qs(target.query)
        assert params["post_logout_redirect_uri"] == ["http://testserver/auth/signed-out"]
        assert params["client_id"] == ["tenantllm"] and "id_token_hint" not in params
        assert (await client.get("/whoami")).status_code == 401
    async with app_client(app) as thief:
        thief.cookies.set("tenantllm_session", copied)
        assert (await thief.get("/whoami")).status_code == 401
    assert services.auditor.actions("ok") == ["login", "logout"]


async def test_group_removal_takes_effect_at_next_refresh(tmp_path: Path, oidc_issuer: str) -> None:
    settings = make_auth_settings(tmp_path, oidc_issuer, groups_refresh_seconds=5)
    app, _ = build_auth_app(settings)
    fiona = next(u for u in DEMO_USERS if u.sub == "fiona")
    try:
        async with app_client(app) as client:
            await login(client, "fiona")
            assert (await client.get("/whoami")).json()["tenant_roles"] == {"finance": "member"}
            # The IdP moves fiona from finance to sales.
            set_idp_user(oidc_issuer, "fiona", {**fiona.claims(), "groups": ["sales"]})
            # Within the interval the session keeps what it read (no IdP call per request) ...
            assert (await client.get("/whoami")).json()["tenant_roles"] == {"finance": "member"}
            # ... once the interval has passed, the next request re-reads the groups.
            _age_groups(settings, "fiona", 6)
            me = (await client.get("/whoami")).json()
            assert me["tenant_roles"] == {"sales": "member"}
            assert (await client.get("/teams/finance/chat")).status_code == 403
    finally:
        set_idp_user(oidc_issuer, "fiona", {k: v for k, v in fiona.claims().items() if k != "sub"})


async def test_revoked_at_idp_ends_the_session(tmp_path: Path, oidc_issuer: str) -> None:
    import httpx

    settings = make_auth_settings(tmp_path, oidc_issuer, groups_refresh_seconds=5)
    app, services = build_auth_app(settings)
    async with app_client(app) as client:
        await login(client, "dave")
        assert (await client.get("/whoami")).status_code == 200
        httpx.post(f"{oidc_issuer}/users/dave/revoke-tokens").raise_for_status()
        _age_groups(settings, "dave", 6)
        assert (await client.get("/whoami")).status_code == 401
    assert "session_end" in services.auditor.actions("denied")
    assert sessions_of(settings, "dave") == []


async def test_unreachable_idp_keeps_groups_for_one_more_interval(
    tmp_path: Path, oidc_issuer: str
) -> None:
    from core.auth.idp import IdentityProvider

    settings = make_auth_settings(tmp_path, oidc_issuer, groups_refresh_seconds=5)
    app, _ = build_auth_app(settings)
    async with app_client(app) as client:
        await login(client, "alice")
        # The IdP goes away (a closed port): refreshes fail with a network error.
        dead = IdentityProvider("http://127.0.0.1:9", "tenantllm", "x", "")
        dead._metadata = {
            "userinfo_endpoint": "http://127.0.0.1:9/userinfo",
            "token_endpoint": "http://127.0.0.1:9/token",
        }
        app.state.auth.idp = dead
        _age_groups(settings, "alice", 6)
        assert (await client.get("/whoami")).status_code == 200  # grace: one more interval
        _age_groups(settings, "alice", 11)
        assert (await client.get("/whoami")).status_code == 401  # then sign in again
