"""Security headers on every kind of response of the real app (issue 12, items 1 and 6).

The running app (`app_server`, development mode) is asked for the Gradio page, Gradio's own
routes, the sign-in redirect, the signed-out page and API errors: each answer carries the CSP,
anti-framing, nosniff and referrer headers, and no HSTS (plain-http development). Production
mode is checked on an app built in-process by `create_app` (HSTS on, same policy).
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from core.config import Settings
from core.security_headers import HSTS
from core.server import create_app
from core.services import build_services
from tests.fixtures.app_server import AppServer
from tests.ui_helpers import make_user, signed_in_client

HTML = {"accept": "text/html,application/xhtml+xml"}
REQUIRED_DIRECTIVES = {
    "default-src": {"'self'"},
    "img-src": {"'self'", "data:"},
    "connect-src": {"'self'"},
    "frame-src": {"'none'"},
    "object-src": {"'none'"},
    "base-uri": {"'self'"},
    "frame-ancestors": {"'none'"},
}


def _policy(response: httpx.Response) -> dict[str, set[str]]:
    header = response.headers.get("content-security-policy")
    assert header, f"no CSP on {response.request.url}"
    directives: dict[str, set[str]] = {}
    for part in header.split(";"):
        name, *values = part.split()
        directives[name] = set(values)
    return directives


def origin(url: str) -> str:
    """`http://127.0.0.1:9400/x` -> `http://127.0.0.1:9400`."""
    return re.sub(r"^(https?://[^/]+).*$", r"\1", url)


def assert_secure_headers(
    response: httpx.Response, idp: str, *, hsts: bool = False
) -> dict[str, set[str]]:
    """The four headers are there and the CSP allows no foreign source; returns the CSP."""
    where = f"{response.request.method} {response.request.url} -> {response.status_code}"
    assert response.headers.get("x-content-type-options") == "nosniff", where
    assert response.headers.get("x-frame-options") == "DENY", where
    assert response.headers.get("referrer-policy") in ("no-referrer", "strict-origin"), where
    assert ("strict-transport-security" in response.headers) is hsts, where
    policy = _policy(response)
    for name, values in REQUIRED_DIRECTIVES.items():
        assert policy.get(name) == values, f"{where}: {name} is {policy.get(name)}"
    scripts = policy["script-src"]
    # Only our origin and this response's nonce: no inline handler, no other host. Gradio's
    # gr.HTML compiles its templates with `new Function`, hence 'unsafe-eval' (and no more).
    assert "'unsafe-inline'" not in scripts, where
    assert {s for s in scripts if not s.startswith("'nonce-")} == {"'self'", "'unsafe-eval'"}
    # Forms post to us; the sign-in and sign-out redirects that follow end at the IdP.
    assert policy["form-action"] == {"'self'", origin(idp)}, where
    return policy


def test_gradio_page_and_routes_carry_the_headers(app_server: AppServer) -> None:
    sub = make_user(app_server.issuer, ["sales"], prefix="hdr")
    with signed_in_client(app_server.base_url, sub) as client:
        page = client.get("/", headers=HTML)
        assert page.status_code == 200 and "gradio_config" in page.text
        policy = assert_secure_headers(page, app_server.issuer)
        # Every inline script of the page carries this response's nonce; nothing else runs.
        [nonce] = [s[len("'nonce-") : -1] for s in policy["script-src"] if s.startswith("'nonce-")]
        tags = re.findall(r"<script\b[^>]*>", page.text, flags=re.IGNORECASE)
        assert len(tags) >= 3, tags
        assert all(f'nonce="{nonce}"' in tag for tag in tags), tags
        # A second page load gets a fresh nonce.
        again = _policy(client.get("/", headers=HTML))["script-src"]
        assert f"'nonce-{nonce}'" not in again
        for path in ("/config", "/gradio_api/info", "/theme.css", "/gradio_api/nope"):
            answer = client.get(path)
            assert answer.status_code < 500, (path, answer.status_code)
            assert_secure_headers(answer, app_server.issuer)


def test_sign_in_pages_and_errors_carry_the_headers(app_server: AppServer) -> None:
    with httpx.Client(base_url=app_server.base_url, timeout=30) as client:
        signed_out = client.get("/", headers=HTML)
        assert signed_out.status_code == 302 and signed_out.headers["location"] == "/login"
        assert_secure_headers(signed_out, app_server.issuer)
        login = client.get("/login", headers=HTML)
        assert login.status_code == 302 and login.headers["location"].startswith(app_server.issuer)
        assert_secure_headers(login, app_server.issuer)
        page = client.get("/auth/signed-out", headers=HTML)
        assert page.status_code == 200 and "signed out" in page.text.lower()
        assert_secure_headers(page, app_server.issuer)
        for path in ("/v1/models", "/v1/no-such-route", "/gradio_api/info", "/config"):
            refused = client.get(path)
            assert refused.status_code in (401, 403, 404), (path, refused.status_code)
            assert_secure_headers(refused, app_server.issuer)
        bad_key = client.post(
            "/v1/chat/completions",
            headers={"authorization": "Bearer tlm_wrong"},
            json={"model": "x", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert bad_key.status_code == 401 and "error" in bad_key.json()
        assert_secure_headers(bad_key, app_server.issuer)


def _production_settings(tmp_path: Path) -> Settings:
    return Settings(
        mode="production",
        data_dir=tmp_path,
        oidc_issuer="https://idp.example.org/realms/acme",
        oidc_client_secret="a-real-client-secret-from-the-idp",
        secret_key="s" * 48,
        master_key="m" * 48,
        public_url="https://llm.example.org",
        allowed_hosts=["llm.example.org", "testserver"],
    )


@pytest.mark.parametrize("mode", ["production", "development"])
async def test_hsts_only_in_production(tmp_path: Path, mode: str) -> None:
    settings = _production_settings(tmp_path)
    if mode == "development":
        settings = settings.model_copy(update={"mode": "development"})
    app = create_app(settings, build_services(settings))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
        for path in ("/healthz", "/v1/models", "/auth/signed-out"):
            answer = await client.get(path, headers=HTML)
            assert answer.status_code in (200, 401), (path, answer.status_code)
            assert_secure_headers(answer, settings.oidc_issuer, hsts=mode == "production")
            if mode == "production":
                assert answer.headers["strict-transport-security"] == HSTS
