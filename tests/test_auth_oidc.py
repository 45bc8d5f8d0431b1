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


# --- bearer access tokens ------------------------------------------------------------------


def _password_less_token(issuer: str, user: str) -> str:
    """An access token from the real provider (code flow without the app, for API tests)."""
    import base64
    import hashlib
    import secrets

    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    params = {
        "client_id": "tenantllm",
        "response_type": "code",
        "scope": "openid email",
        "redirect_uri": "http://127.0.0.1/cb",
        "nonce": "n",
        "state": "s",
        "code_challenge": challenge.decode(),
        "code_challenge_method": "S256",
    }
    url = str(httpx.URL(f"{issuer}/oauth2/authorize", params=params))
    answer = httpx.post(url, data={"sub": user}, follow_redirects=False)
    code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
    token = httpx.post(
        f"{issuer}/oauth2/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": "http://127.0.0.1/cb",
        },
        auth=("tenantllm", "tenantllm-secret"),
    )
    token.raise_for_status()
    return str(token.json()["access_token"])


async def test_opaque_access_token_via_userinfo(tmp_path: Path, oidc_issuer: str) -> None:
    # oidc-provider-mock's access tokens are opaque: they are checked at its userinfo endpoint.
    app, services = build_auth_app(make_auth_settings(tmp_path, oidc_issuer))
    token = _password_less_token(oidc_issuer, "dave")
    async with app_client(app) as client:
        me = await client.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"})
        assert me.json()["tenant_roles"] == {"development": "editor"}
        httpx.post(f"{oidc_issuer}/users/dave/revoke-tokens").raise_for_status()
        app.state.auth._userinfo_cache.clear()  # what the 60 s cache expiry does
        refused = await client.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"})
        assert refused.status_code == 401


async def test_jwt_access_tokens(tmp_path: Path, fake_idp) -> None:
    import time

    from joserfc.jwk import RSAKey

    # JWT access tokens are verified locally only for a configured API audience.
    settings = make_auth_settings(tmp_path, fake_idp.url, oidc_audience="tenantllm-api")
    app, services = build_auth_app(settings)
    now = int(time.time())
    good = fake_idp.claims(None, groups=["finance-editors"], aud="tenantllm-api", scope="chat")
    cases = {
        "good": (fake_idp.sign(good), 200),
        "wrong_aud": (fake_idp.sign({**good, "aud": "other-api"}), 401),
        "wrong_iss": (fake_idp.sign({**good, "iss": "http://evil"}), 401),
        "expired": (fake_idp.sign({**good, "exp": now - 600}), 401),
        "other_key": (
            fake_idp.sign(
                good, RSAKey.generate_key(2048, parameters={"kid": "key-1"}, private=True)
            ),
            401,
        ),
    }
    async with app_client(app) as client:
        for name, (token, status) in cases.items():
            answer = await client.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == status, name
            if status == 200:
                assert answer.json()["tenant_roles"] == {"finance": "editor"}
        # A rotated key is fetched once; an unknown kid costs one refetch, then is refused.
        fetches = app.state.auth.idp.jwks_fetches
        rotated = RSAKey.generate_key(2048, parameters={"kid": "key-2"}, private=True)
        fake_idp.published = [fake_idp.signing_key, rotated]
        ok = await client.get(
            "/v1/whoami", headers={"Authorization": f"Bearer {fake_idp.sign(good, rotated)}"}
        )
        assert ok.status_code == 200 and app.state.auth.idp.jwks_fetches == fetches + 1
        # Right after that refetch, a made-up kid is refused without hitting the IdP again.
        stranger = RSAKey.generate_key(2048, parameters={"kid": "key-x"}, private=True)
        bad = await client.get(
            "/v1/whoami", headers={"Authorization": f"Bearer {fake_idp.sign(good, stranger)}"}
        )
        assert bad.status_code == 401 and app.state.auth.idp.jwks_fetches == fetches + 1
    assert services.auditor.actions("denied").count("bearer_auth") == 5


def test_wants_html_tells_browsers_from_programs() -> None:
    from starlette.requests import Request

    from core.auth.principal import wants_html

    def request(path: str, accept: str) -> Request:
        headers = [(b"accept", accept.encode())]
        return Request({"type": "http", "method": "GET", "path": path, "headers": headers})

    page = "text/html,application/xhtml+xml,*/*;q=0.8"
    assert wants_html(request("/", page))
    assert wants_html(request("/documents", page))
    assert not wants_html(request("/", "application/json"))
    assert not wants_html(request("/v1/models", page))  # the API answers 401, never redirects
    assert not wants_html(request("/gradio_api/info", page))


def test_next_after_sign_in_is_local_only() -> None:
    from core.auth.routes import safe_next

    assert safe_next("/documents?x=1") == "/documents?x=1"
    for bad in (None, "", "https://evil.example/", "//evil.example", "/\\evil.example", "x"):
        assert safe_next(bad) == "/"
