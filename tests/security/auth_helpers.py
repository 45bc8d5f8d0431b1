"""Sign-out and session probes shared by the token and cross-site attack tests."""

from __future__ import annotations

import re

import httpx

CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]*)"')


def logout_form_token(client: httpx.Client) -> str | None:
    """The CSRF token of the sign-out form `GET /logout` shows (None if it shows none)."""
    page = client.get("/logout", follow_redirects=False)
    match = CSRF_FIELD.search(page.text) if page.status_code == 200 else None
    return match.group(1) if match else None


def sign_out(client: httpx.Client) -> httpx.Response:
    """Sign out the way the app's own button does; returns the answer (not followed).

    An app that still signs out on `GET /logout` (the old behaviour) answers that GET with
    the redirect itself: it is returned as is, so the caller can inspect it.
    """
    first = client.get("/logout", follow_redirects=False)
    if first.is_redirect:
        return first
    token = logout_form_token(client)
    assert token, f"no sign-out form on GET /logout: {first.status_code} {first.text[:300]}"
    return client.post("/logout", data={"csrf_token": token}, follow_redirects=False)


def signed_in(client: httpx.Client) -> bool:
    """Whether this client's session cookie still opens the app (Gradio's config route)."""
    answer = client.get("/config", headers={"accept": "application/json"}, follow_redirects=False)
    return answer.status_code == 200 and "components" in answer.text
