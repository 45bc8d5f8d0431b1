"""Sign-in through the real OIDC provider process (oidc-provider-mock on loopback)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.fixtures.oidc import app_client, build_auth_app, login, make_auth_settings


async def test_alice_signs_in_as_sales_member(tmp_path: Path, oidc_issuer: str) -> None:
    app, services = build_auth_app(make_auth_settings(tmp_path, oidc_issuer))
    async with app_client(app) as client:
        assert (await client.get("/whoami")).status_code == 401
        start = await client.get("/login", follow_redirects=False)
        query = parse_qs(urlsplit(start.headers["location"]).query)
        # The authorization request carries PKCE S256, state and nonce.
        assert query["code_challenge_method"] == ["S256"]
        assert query["code_challenge"][0] and query["state"][0] and query["nonce"][0]
        done = await login(client, "alice", next_path="/whoami")
        assert done.status_code == 302 and done.headers["location"] == "/whoami"
        cookie = done.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie
        me = (await client.get("/whoami")).json()
    assert me["subject"] == "alice" and me["kind"] == "user"
    assert me["tenant_roles"] == {"sales": "member"} and me["global_roles"] == []
    assert services.auditor.actions("ok") == ["login"]


async def test_demo_users_get_their_roles(tmp_path: Path, oidc_issuer: str) -> None:
    app, _ = build_auth_app(make_auth_settings(tmp_path, oidc_issuer))
    expected = {
        "erin": ({"sales": "editor"}, []),
        "dave": ({"development": "editor"}, []),
        "fiona": ({"finance": "member"}, []),
        "audrey": ({}, ["auditor"]),
        "root": ({t: "editor" for t in ("sales", "development", "finance")}, ["admin"]),
    }
    for user, (tenant_roles, global_roles) in expected.items():
        async with app_client(app) as client:
            assert (await login(client, user)).status_code == 302
            me = (await client.get("/whoami")).json()
        assert (me["tenant_roles"], me["global_roles"]) == (tenant_roles, global_roles), user


async def test_unknown_group_grants_nothing(tmp_path: Path, oidc_issuer: str) -> None:
    # A user the provider creates on the fly has no groups at all; "zed" gets only junk.
    from tests.fixtures.oidc import set_idp_user

    set_idp_user(oidc_issuer, "zed", {"email": "zed@example.com", "groups": ["sales-x", "admin"]})
    app, _ = build_auth_app(make_auth_settings(tmp_path, oidc_issuer))
    async with app_client(app) as client:
        assert (await login(client, "zed")).status_code == 302
        me = (await client.get("/whoami")).json()
    assert me["tenant_roles"] == {} and me["global_roles"] == []


async def test_production_cookie_is_secure(tmp_path: Path, oidc_issuer: str) -> None:
    settings = make_auth_settings(
        tmp_path, oidc_issuer, mode="production", secret_key="s" * 40, master_key="m" * 40
    )
    app, _ = build_auth_app(settings)
    async with app_client(app) as client:
        start = await client.get("/login", follow_redirects=False)
    assert "secure" in start.headers["set-cookie"].lower()


async def test_untrusted_host_is_refused(tmp_path: Path, oidc_issuer: str) -> None:
    app, _ = build_auth_app(make_auth_settings(tmp_path, oidc_issuer))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://evil.example"
    ) as client:
        assert (await client.get("/login")).status_code == 400
