"""The browser sign-in routes: `/login`, `/auth/callback`, `/logout`, `/auth/signed-out`.

`add_auth_routes(app, runtime, client, limiter)` registers them: `/login` -> the IdP
(authorization code + PKCE S256, state, nonce), `/auth/callback` (ID token checked: signature
via JWKS with one refetch on an unknown kid, iss, aud, exp, nonce; then a fresh server-side
session, core/auth/sessions.py), `POST /logout`, `/auth/signed-out`. Sign-in is limited per
client address (`rate_limit_signin`, on the app's slowapi limiter: core/server.py). Sign-ins
(ok and refused) and sign-outs are audited here.

Sign-out changes state, so it is `POST /logout` with the session's CSRF token (a form field,
core/auth/sessions.py `csrf_token`), behind the cross-origin check of core/auth/cross_site.py. `GET
/logout` only shows a page with that form: a link or image on another site cannot sign anyone
out. At the IdP, RP-initiated logout names the client (`client_id`) instead of sending the ID
token as `id_token_hint`: a URL ends up in histories, logs and Referer headers, and the app
keeps no ID token at all after sign-in.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from authlib.integrations.starlette_client import OAuth, OAuthError, StarletteOAuth2App
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from joserfc.errors import JoseError
from slowapi import Limiter
from slowapi.util import get_remote_address

from core.audit.auditor import AuditEvent
from core.auth.bearer import AuthRuntime
from core.auth.idp import groups_from_claims
from core.auth.sessions import (
    create_session,
    csrf_token,
    csrf_token_ok,
    load_session,
    revoke_session,
    session_id_of,
)
from core.config import Settings
from core.limits import parse_limit

LOGIN_ERRORS = (OAuthError, JoseError, httpx.HTTPError, ValueError, KeyError, TypeError)


class LoginRefused(Exception):
    """The IdP's answer is not acceptable (no ID token, no subject)."""


def make_oauth_client(settings: Settings) -> StarletteOAuth2App:
    """The authlib client for the configured issuer (metadata by discovery, fetched lazily)."""
    oauth = OAuth()
    oauth.register(
        name="oidc",
        client_id=settings.oidc_client_id,
        client_secret=settings.oidc_client_secret,
        server_metadata_url=f"{settings.oidc_issuer.rstrip('/')}/.well-known/openid-configuration",
        client_kwargs={"scope": "openid email profile", "code_challenge_method": "S256"},
    )
    client = oauth.create_client("oidc")
    assert isinstance(client, StarletteOAuth2App)
    return client


def _claims_options(settings: Settings) -> dict[str, Any]:
    # Passing options replaces authlib's default iss check, so iss is listed here too.
    return {
        "iss": {"essential": True, "values": [settings.oidc_issuer.rstrip("/")]},
        "aud": {"essential": True, "values": [settings.oidc_client_id]},
        "exp": {"essential": True},
    }


def _callback_url(request: Request, settings: Settings) -> str:
    if settings.public_url:
        return f"{settings.public_url.rstrip('/')}/auth/callback"
    return str(request.url_for("auth_callback"))


async def _exchange(client: StarletteOAuth2App, request: Request, settings: Settings) -> Any:
    token = await client.authorize_access_token(request, claims_options=_claims_options(settings))
    userinfo = token.get("userinfo")
    # authlib skips ID-token checks when the IdP sends none: refuse that.
    if not userinfo or not isinstance(userinfo.get("sub"), str):
        raise LoginRefused("the identity provider sent no valid ID token")
    if settings.oidc_groups_claim not in userinfo:
        userinfo = {**(await client.userinfo(token=token)), **userinfo}
    return token, userinfo


def _login_failed(runtime: AuthRuntime, request: Request, exc: Exception) -> Response:
    runtime.services.auditor.record(
        AuditEvent.from_request(
            request,
            action="login",
            outcome="denied",
            status=401,
            error_class=type(exc).__name__,
            detail=str(exc)[:500],
        )
    )
    return signed_out_page("Sign-in failed. Please try again.", 401)


async def _start_session(
    runtime: AuthRuntime, request: Request, token: Any, userinfo: Any
) -> Response:
    """End this browser's previous session, store a new one, put its id in a new cookie."""
    settings = runtime.services.settings
    old = request.session.get("sid")
    if isinstance(old, str):
        await asyncio.to_thread(revoke_session, settings, session_id_of(old))
    next_path = safe_next(request.session.get("next"))
    request.session.clear()  # new session id: no fixation, no leftover state
    subject, email = str(userinfo["sub"]), userinfo.get("email")
    secret = await asyncio.to_thread(
        create_session,
        settings,
        subject=subject,
        email=email,
        name=userinfo.get("name"),
        groups=groups_from_claims(userinfo, settings.oidc_groups_claim),
        # No ID token: it is needed for nothing later, and a stored one could leak.
        tokens={k: token[k] for k in ("access_token", "refresh_token") if token.get(k)},
    )
    request.session.update({"sid": secret, "sub": subject})
    runtime.services.auditor.record(
        AuditEvent.from_request(
            request, action="login", outcome="ok", user_sub=subject, user_email=email
        )
    )
    return redirect(next_path)


def add_auth_routes(
    app: FastAPI, runtime: AuthRuntime, client: StarletteOAuth2App, limiter: Limiter
) -> None:
    """Register the sign-in routes on `app`; `limiter` is the app's (`app.state.limiter`)."""
    settings = runtime.services.settings
    # Per client address: sign-in has no principal yet. A bad value fails at start, not later.
    parse_limit(settings.rate_limit_signin, "rate_limit_signin")
    signin_limit = settings.rate_limit_signin

    @app.get("/login", include_in_schema=False)
    @limiter.limit(signin_limit, key_func=get_remote_address)
    async def login(request: Request) -> Response:
        """Send the browser to the IdP."""
        request.session["next"] = safe_next(request.query_params.get("next"))
        try:
            response: Response = await client.authorize_redirect(
                request, _callback_url(request, settings)
            )
        except (httpx.HTTPError, OAuthError, ValueError, KeyError):
            return signed_out_page("The identity provider cannot be reached right now.", 503)
        return response

    @app.get("/auth/callback", name="auth_callback", include_in_schema=False)
    @limiter.limit(signin_limit, key_func=get_remote_address)
    async def auth_callback(request: Request) -> Response:
        """Check the IdP's answer; on success start a fresh server-side session."""
        try:
            token, userinfo = await _exchange(client, request, settings)
        except (LoginRefused, *LOGIN_ERRORS) as exc:
            return _login_failed(runtime, request, exc)
        return await _start_session(runtime, request, token, userinfo)

    _add_logout_routes(app, runtime, client)


def _add_logout_routes(app: FastAPI, runtime: AuthRuntime, client: StarletteOAuth2App) -> None:
    settings = runtime.services.settings

    @app.get("/logout", include_in_schema=False)
    async def confirm_logout(request: Request) -> Response:
        """A page with the sign-out button (GET changes nothing)."""
        secret = request.session.get("sid")
        if not isinstance(secret, str):
            return redirect("/auth/signed-out")
        return logout_page(csrf_token(settings, secret))

    @app.post("/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        """End the session here, then at the IdP when it supports RP-initiated logout."""
        secret = request.session.get("sid")
        if not isinstance(secret, str):
            request.session.clear()
            return redirect("/auth/signed-out", 303)
        form = await request.form()
        token = form.get("csrf_token")
        if not isinstance(token, str) or not csrf_token_ok(settings, secret, token):
            _audit_logout(runtime, request, None, "denied")
            return signed_out_page("Sign-out refused: please use the app's Sign out button.", 403)
        record = await asyncio.to_thread(load_session, settings, secret)
        await asyncio.to_thread(revoke_session, settings, session_id_of(secret))
        request.session.clear()
        if record is None:
            return redirect("/auth/signed-out", 303)
        _audit_logout(runtime, request, record, "ok")
        return await _idp_logout(client, request, settings)

    @app.get("/auth/signed-out", include_in_schema=False)
    async def signed_out(request: Request) -> Response:
        """Where the IdP sends people back after signing out."""
        return signed_out_page("You are signed out.")


def logout_page(token: str) -> Response:
    """The sign-out confirmation (for `GET /logout`: old links and bookmarks)."""
    body = (
        "<!doctype html><html><head><title>tenantllm</title></head><body>"
        "<p>Sign out of tenantllm?</p>"
        '<form method="post" action="/logout">'
        f'<input type="hidden" name="csrf_token" value="{token}">'
        '<button type="submit">Sign out</button></form>'
        "<p><a href='/'>Back to the app</a></p></body></html>"
    )
    return HTMLResponse(body, headers={"Cache-Control": "no-store"})


def _audit_logout(runtime: AuthRuntime, request: Request, record: Any, outcome: Any) -> None:
    runtime.services.auditor.record(
        AuditEvent.from_request(
            request,
            action="logout",
            outcome=outcome,
            user_sub=record.subject if record is not None else request.session.get("sub"),
            user_email=record.email if record is not None else None,
            status=200 if outcome == "ok" else 403,
            error_class=None if outcome == "ok" else "CsrfTokenMissing",
            detail=None if outcome == "ok" else "sign-out without this session's CSRF token",
        )
    )


async def _idp_logout(client: StarletteOAuth2App, request: Request, settings: Settings) -> Response:
    back = settings.public_url.rstrip("/") or str(request.base_url).rstrip("/")
    try:
        metadata = await client.load_server_metadata()
        if not metadata.get("end_session_endpoint"):
            return redirect("/auth/signed-out", 303)
        # client_id, not id_token_hint: RP-Initiated Logout 1.0 allows either, and only
        # client_id is no credential (an ID token in a URL leaks through logs and Referer).
        result = await client.create_logout_url(
            post_logout_redirect_uri=f"{back}/auth/signed-out",
            client_id=settings.oidc_client_id,
        )
    except (httpx.HTTPError, OAuthError, RuntimeError, ValueError):
        return redirect("/auth/signed-out", 303)  # signed out here; the IdP is unreachable
    return redirect(str(result["url"]), 303)


def signed_out_page(message: str, status: int = 200) -> HTMLResponse:
    """A minimal page with a sign-in link (sign-out, refused sign-in)."""
    body = (
        "<!doctype html><html><head><title>tenantllm</title></head><body>"
        f"<p>{message}</p><p><a href='/login'>Sign in</a></p></body></html>"
    )
    return HTMLResponse(body, status_code=status)


def safe_next(value: str | None) -> str:
    """A local path to return to after sign-in ('/' for anything else: no open redirect)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def redirect(url: str, status: int = 302) -> Response:
    """A redirect (303 after a POST: the browser follows it with a GET)."""
    return RedirectResponse(url, status_code=status)
