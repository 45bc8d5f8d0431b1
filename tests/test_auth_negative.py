"""Every bad sign-in is refused (and audited), none creates a session."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from joserfc.jwk import RSAKey

from core.auth.sessions import AuthSessionRow
from core.db import session_scope
from tests.fixtures.oidc import (
    FakeIdP,
    _authorize_at_idp,
    app_client,
    build_auth_app,
    fake_login,
    login,
    make_auth_settings,
    unsigned_token,
)


def _session_count(settings) -> int:
    with session_scope(settings.resolved_database_url) as db:
        return db.query(AuthSessionRow).count()


async def _refused(client: httpx.AsyncClient, response: httpx.Response, services) -> None:
    assert response.status_code == 401, response.text
    assert (await client.get("/whoami")).status_code == 401
    assert services.auditor.actions("denied")[-1] == "login"
    assert _session_count(services.settings) == 0


# --- against the real provider -------------------------------------------------------------


async def test_wrong_state_is_refused(tmp_path: Path, oidc_issuer: str) -> None:
    app, services = build_auth_app(make_auth_settings(tmp_path, oidc_issuer))
    async with app_client(app) as client:
        start = await client.get("/login", follow_redirects=False)
        callback = _authorize_at_idp(start.headers["location"], "alice")
        parts = urlsplit(callback)
        code = parse_qs(parts.query)["code"][0]
        forged = await client.get("/auth/callback", params={"code": code, "state": "forged"})
        await _refused(client, forged, services)


async def test_replayed_code_is_refused(tmp_path: Path, oidc_issuer: str) -> None:
    app, services = build_auth_app(make_auth_settings(tmp_path, oidc_issuer))
    async with app_client(app) as client:
        start = await client.get("/login", follow_redirects=False)
        callback = _authorize_at_idp(start.headers["location"], "alice")
        assert (await client.get(callback)).status_code == 302
    code = parse_qs(urlsplit(callback).query)["code"][0]
    async with app_client(app) as attacker:
        # Same callback again (state already used) ...
        again = await attacker.get(callback)
        assert again.status_code == 401
        # ... and the code with a fresh, valid state of the attacker's own: the IdP refuses it.
        start = await attacker.get("/login", follow_redirects=False)
        state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
        replay = await attacker.get("/auth/callback", params={"code": code, "state": state})
        assert replay.status_code == 401
        assert (await attacker.get("/whoami")).status_code == 401
    assert services.auditor.actions("denied") == ["login", "login"]


async def test_denied_at_idp_is_refused(tmp_path: Path, oidc_issuer: str) -> None:
    app, services = build_auth_app(make_auth_settings(tmp_path, oidc_issuer))
    async with app_client(app) as client:
        start = await client.get("/login", follow_redirects=False)
        answer = httpx.post(start.headers["location"], data={"action": "deny"})
        back = await client.get(answer.headers["location"])
        await _refused(client, back, services)


async def test_tampered_session_cookie_is_refused(tmp_path: Path, oidc_issuer: str) -> None:
    app, _ = build_auth_app(make_auth_settings(tmp_path, oidc_issuer))
    async with app_client(app) as client:
        assert (await login(client, "alice")).status_code == 302
        assert (await client.get("/whoami")).status_code == 200
        value = client.cookies["tenantllm_session"]
        payload, _, signature = value.partition(".")
        tampered = (
            payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1] + "." + signature
        )
        client.cookies.set("tenantllm_session", tampered)
        assert (await client.get("/whoami")).status_code == 401
        # A cookie signed with another secret is refused too.
        from itsdangerous import TimestampSigner

        forged = TimestampSigner("another-secret").sign(payload).decode()
        client.cookies.set("tenantllm_session", forged)
        assert (await client.get("/whoami")).status_code == 401


# --- crafted ID tokens ---------------------------------------------------------------------


CRAFTED = {
    "wrong_issuer": lambda f, n: f.sign(f.claims(n, iss="http://127.0.0.1:1/other")),
    "wrong_audience": lambda f, n: f.sign(f.claims(n, aud="someone-else")),
    # azp = our client id satisfies authlib's azp rule: only the aud check refuses this one.
    "wrong_audience_with_azp": lambda f, n: f.sign(
        f.claims(n, aud=["someone-else"], azp="tenantllm")
    ),
    "wrong_nonce": lambda f, n: f.sign(f.claims("not-the-nonce")),
    "missing_nonce": lambda f, n: f.sign(f.claims(None)),
    "expired": lambda f, n: f.sign(
        f.claims(n, iat=int(time.time()) - 3600, exp=int(time.time()) - 1800)
    ),
    "alg_none": lambda f, n: unsigned_token(f.claims(n)),
    "other_key_same_kid": lambda f, n: f.sign(
        f.claims(n), RSAKey.generate_key(2048, parameters={"kid": "key-1"}, private=True)
    ),
    "garbage": lambda f, n: "not.a.jwt",
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
async def test_bad_id_token_is_refused(tmp_path: Path, fake_idp: FakeIdP, case: str) -> None:
    app, services = build_auth_app(make_auth_settings(tmp_path, fake_idp.url))
    fake_idp.next_id_token = lambda nonce: CRAFTED[case](fake_idp, nonce)
    async with app_client(app) as client:
        await _refused(client, await fake_login(client, fake_idp), services)


async def test_valid_crafted_token_is_accepted(tmp_path: Path, fake_idp: FakeIdP) -> None:
    # The control for the cases above: the same provider with a correct token signs in.
    app, _ = build_auth_app(make_auth_settings(tmp_path, fake_idp.url))
    async with app_client(app) as client:
        assert (await fake_login(client, fake_idp)).status_code == 302
        assert (await client.get("/whoami")).json()["tenant_roles"] == {"sales": "member"}


async def test_unknown_kid_refetches_jwks_once_then_refuses(
    tmp_path: Path, fake_idp: FakeIdP
) -> None:
    app, services = build_auth_app(make_auth_settings(tmp_path, fake_idp.url))
    stranger = RSAKey.generate_key(2048, parameters={"kid": "key-unknown"}, private=True)
    fake_idp.next_id_token = lambda nonce: fake_idp.sign(fake_idp.claims(nonce), stranger)
    async with app_client(app) as client:
        await _refused(client, await fake_login(client, fake_idp), services)
    assert fake_idp.jwks_fetches == 2  # the cached set, then exactly one refetch


async def test_rotated_key_is_accepted_after_refetch(tmp_path: Path, fake_idp: FakeIdP) -> None:
    app, _ = build_auth_app(make_auth_settings(tmp_path, fake_idp.url))
    async with app_client(app) as client:
        assert (await fake_login(client, fake_idp)).status_code == 302
    assert fake_idp.jwks_fetches == 1
    rotated = RSAKey.generate_key(2048, parameters={"kid": "key-2"}, private=True)
    fake_idp.published, fake_idp.signing_key = [rotated], rotated
    async with app_client(app) as client:
        assert (await fake_login(client, fake_idp)).status_code == 302
        assert (await client.get("/whoami")).status_code == 200
    assert fake_idp.jwks_fetches == 2
