"""Issue 12, item 5: cross-site requests. Same-origin only unless an origin is configured; a
page of another site cannot sign anyone out, nor make the browser change state in the app.

Against the real app (`app_server`, which allows one origin: TRUSTED_ORIGIN) and, for the
sign-out button, a real Chromium.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.fixtures.app_server import TRUSTED_ORIGIN
from tests.fixtures.browser import screenshot, sign_in
from tests.security.auth_helpers import logout_form_token, signed_in
from tests.ui_helpers import make_user, signed_in_client

EVIL = "https://evil.example"
# Gradio only reflects origins when the Host is not localhost; "testserver" is an allowed
# Host of the app (TENANTLLM_ALLOWED_HOSTS default) that is not localhost.
PUBLIC_HOST = "testserver"
PATHS = ["/", "/config", "/gradio_api/info", "/healthz", "/v1/models", "/logout"]
CROSS_SITE = {"Origin": EVIL, "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}


@pytest.mark.parametrize("host", [PUBLIC_HOST, None])
@pytest.mark.parametrize("path", PATHS)
def test_foreign_origin_gets_no_cors_grant(app_server: Any, path: str, host: str | None) -> None:
    headers = {"Origin": EVIL, **({"Host": host} if host else {})}
    with httpx.Client(base_url=app_server.base_url, timeout=60) as client:
        simple = client.get(path, headers=headers)
        preflight = client.options(
            path,
            headers={
                **headers,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
    assert simple.status_code != 400, simple.text[:200]  # the Host was accepted
    for answer in (simple, preflight):
        assert "access-control-allow-origin" not in answer.headers, (path, answer.headers)


@pytest.mark.parametrize("host", [PUBLIC_HOST, None])
def test_configured_origin_is_granted(app_server: Any, host: str | None) -> None:
    headers = {"Origin": TRUSTED_ORIGIN, **({"Host": host} if host else {})}
    with httpx.Client(base_url=app_server.base_url, timeout=60) as client:
        simple = client.get("/healthz", headers=headers)
        preflight = client.options(
            "/v1/models",
            headers={
                **headers,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
    for answer in (simple, preflight):
        assert answer.headers.get("access-control-allow-origin") == TRUSTED_ORIGIN, answer.headers
        assert answer.headers.get("access-control-allow-credentials") == "true"


def test_get_logout_does_not_sign_out(app_server: Any) -> None:
    sub = make_user(app_server.issuer, ["sales"], prefix="xs")
    with signed_in_client(app_server.base_url, sub) as client:
        # What a link or an <img src=".../logout"> on another site makes the browser send.
        answer = client.get("/logout", headers=CROSS_SITE, follow_redirects=False)
        assert answer.status_code in (200, 405), answer.status_code
        assert not answer.is_redirect
        assert signed_in(client)


@pytest.mark.parametrize("cross_site", [True, False], ids=["from_other_site", "no_headers"])
def test_post_logout_without_the_token_is_refused(app_server: Any, cross_site: bool) -> None:
    sub = make_user(app_server.issuer, ["sales"], prefix="xs")
    with signed_in_client(app_server.base_url, sub) as client:
        headers = CROSS_SITE if cross_site else {}
        for data in ({}, {"csrf_token": "0" * 64}):
            answer = client.post("/logout", data=data, headers=headers, follow_redirects=False)
            assert answer.status_code == 403, (data, answer.status_code, answer.text[:200])
            assert signed_in(client)
        if cross_site:
            # Even the right token does not help a request another site made.
            token = logout_form_token(client)
            assert token
            answer = client.post(
                "/logout", data={"csrf_token": token}, headers=headers, follow_redirects=False
            )
            assert answer.status_code == 403 and signed_in(client)


def test_cross_site_posts_to_gradio_routes_are_refused(app_server: Any) -> None:
    sub = make_user(app_server.issuer, ["sales-editors"], prefix="xs")
    with signed_in_client(app_server.base_url, sub) as client:
        upload = client.post(
            "/gradio_api/upload",
            files={"files": ("x.txt", b"cross-site upload", "text/plain")},
            headers=CROSS_SITE,
        )
        join = client.post(
            "/gradio_api/queue/join",
            content=b'{"data": [], "fn_index": 0, "session_hash": "abcdefghijk"}',
            headers={**CROSS_SITE, "Content-Type": "text/plain"},
        )
    assert upload.status_code == 403, upload.text[:200]
    assert join.status_code == 403, join.text[:200]


def test_browser_sign_out_still_works(app_server: Any, new_context: Any) -> None:
    sub = make_user(app_server.issuer, ["sales"], prefix="xs")
    page = new_context().new_page()
    sign_in(page, app_server.base_url, sub)
    screenshot(page, "security-sign-out-before")
    page.locator("#tl-signout").click()
    # The demo IdP asks to confirm its own sign-out, then sends the browser back to us.
    page.wait_for_url(lambda url: "end_session" in url or "/auth/signed-out" in url)
    if "end_session" in page.url:
        page.locator("form button, form input[type=submit]").first.click()
    page.wait_for_url(lambda url: "/auth/signed-out" in url)
    assert "You are signed out" in page.content()
    screenshot(page, "security-sign-out-after")
    # The session is over: the app sends the browser to the IdP's sign-in form again.
    page.goto(app_server.base_url + "/")
    page.wait_for_url(lambda url: not url.startswith(app_server.base_url))
    assert page.locator("input[name='sub']").count() == 1
