"""Issue 12, item 4: only access tokens open the API, and sign-out leaks no credential.

Real tokens from the test IdP (oidc-provider-mock, through a real code flow) against the real
app, plus crafted ID-token shapes against a small app whose API audience IS the client id (the
configuration in which an audience check alone lets ID tokens in).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from joserfc import jwt

from tests.fixtures.oidc import (
    CLIENT_ID,
    FakeIdP,
    app_client,
    build_auth_app,
    code_flow_tokens,
    make_auth_settings,
)
from tests.security.auth_helpers import sign_out, signed_in
from tests.ui_helpers import make_user, signed_in_client


def _models(base_url: str, token: str) -> httpx.Response:
    return httpx.get(
        f"{base_url}/v1/models", headers={"Authorization": f"Bearer {token}"}, timeout=60
    )


def _assert_openai_401(answer: httpx.Response) -> None:
    assert answer.status_code == 401, answer.text[:300]
    error = answer.json()["error"]
    assert error["type"] and error["code"] and error["message"], error
    assert "data" not in answer.json()


def test_id_token_is_refused_access_token_is_accepted(app_server: Any) -> None:
    sub = make_user(app_server.issuer, ["sales"], prefix="tok")
    tokens = code_flow_tokens(app_server.issuer, sub)
    assert tokens["id_token"].count(".") == 2  # a signed JWT whose aud is the client id

    refused = _models(app_server.base_url, tokens["id_token"])
    _assert_openai_401(refused)
    assert "not an access token" in refused.json()["error"]["message"]

    accepted = _models(app_server.base_url, tokens["access_token"])
    assert accepted.status_code == 200, accepted.text[:300]
    assert [m["id"] for m in accepted.json()["data"]] == ["sales"]


def _id_token_shapes(fake: FakeIdP) -> dict[str, str]:
    """ID tokens as IdPs issue them (aud = client id), in every shape we must recognise."""
    now = int(time.time())
    base = fake.claims(None, auth_time=now)  # aud = client id, no nonce: a plain code flow
    key = fake.signing_key
    assert key is not None
    typed = jwt.encode({"alg": "RS256", "kid": key.kid, "typ": "id_token+jwt"}, base, key)
    return {
        "with_nonce": fake.sign({**base, "nonce": "n"}),
        "with_at_hash": fake.sign({**base, "at_hash": "x"}),
        "keycloak_typ_id": fake.sign({**base, "typ": "ID", "scope": "openid"}),
        "without_nonce": fake.sign(base),
        "typed_id_token": typed,
    }


async def test_no_id_token_shape_passes_even_when_the_api_audience_is_the_client_id(
    tmp_path: Path, fake_idp: FakeIdP
) -> None:
    settings = make_auth_settings(tmp_path, fake_idp.url, oidc_audience=CLIENT_ID)
    app, _ = build_auth_app(settings)
    now = int(time.time())
    access = fake_idp.sign(fake_idp.claims(None, scope="openid", client_id=CLIENT_ID))
    rfc9068 = jwt.encode(
        {"alg": "RS256", "kid": "key-1", "typ": "at+jwt"},
        fake_idp.claims(None, auth_time=now),
        fake_idp.signing_key,
    )
    async with app_client(app) as client:

        async def status(token: str) -> int:
            answer = await client.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"})
            return answer.status_code

        statuses = {name: await status(t) for name, t in _id_token_shapes(fake_idp).items()}
        assert statuses == dict.fromkeys(statuses, 401)
        # Access tokens of the same IdP and audience still work (the check is not "refuse all").
        assert await status(access) == 200
        assert await status(rfc9068) == 200


def test_sign_out_leaks_no_usable_credential(app_server: Any) -> None:
    sub = make_user(app_server.issuer, ["sales"], prefix="tok")
    with signed_in_client(app_server.base_url, sub) as client:
        out = sign_out(client)
        assert out.is_redirect, out.text[:300]
        location = out.headers["location"]
        assert not signed_in(client)
    parts = urlsplit(location)
    values = [v for _, v in parse_qsl(parts.query)] + [v for _, v in parse_qsl(parts.fragment)]
    assert "id_token_hint" not in location
    for value in values:
        answer = _models(app_server.base_url, value)
        assert answer.status_code == 401, f"{value[:40]}... opened the API: {answer.text[:200]}"


@pytest.mark.parametrize("kind", ["id_token", "refresh_token"])
def test_other_tokens_of_a_sign_in_are_no_api_credential(app_server: Any, kind: str) -> None:
    sub = make_user(app_server.issuer, ["sales"], prefix="tok")
    tokens = code_flow_tokens(app_server.issuer, sub)
    _assert_openai_401(_models(app_server.base_url, tokens[kind]))
