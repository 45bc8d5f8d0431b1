"""Sign-in: OIDC (authlib) in the browser, server-side sessions, bearer credentials.

`install_auth(app, services)` adds to a FastAPI app:
- `/login` -> the IdP (authorization code + PKCE S256, state, nonce), `/auth/callback`
  (ID token checked: signature via JWKS with one refetch on an unknown kid, iss, aud, exp,
  nonce), `POST /logout` with the session's CSRF token (ends the server-side session, then
  RP-initiated logout at the IdP, by client id, when it has an `end_session_endpoint`),
  `/auth/signed-out`;
- Starlette `SessionMiddleware` (signed cookie: HttpOnly, SameSite=Lax, Secure in production)
  holding only a random session secret and the subject; the session itself is a database row
  (core/auth/sessions.py), so sign-out also kills copies of the cookie;
- a middleware that re-reads the user's groups from the IdP (userinfo, or the refresh token
  when the access token expired) every `groups_refresh_seconds`; if the IdP refuses, the
  session ends; if it is unreachable, the old groups stay valid for one more interval, then
  the user must sign in again;
- `TrustedHostMiddleware` (Settings.allowed_hosts), CORS for `Settings.cors_origins` only and
  cross-origin protection for state-changing requests (core/auth/cross_site.py), the rate limiter
  (core/limits.py), and the refusal log that audits refused bearer credentials
  (core/audit/refusals.py);
- SIGHUP re-reads the group mapping.
Sign-ins (ok and refused), sign-outs and ended sessions are audited here.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.middleware.sessions import SessionMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from core.audit.auditor import AuditEvent
from core.audit.refusals import RefusalLog
from core.auth.bearer import (
    AuthRuntime,
    IdentityProvider,
    IdpRefused,
    IdpUnavailable,
    activate,
    active_runtime,
    groups_from_claims,
    principal_from_bearer,
)
from core.auth.cross_site import install_cross_site
from core.auth.sessions import (
    SessionRecord,
    csrf_token,
    load_session,
    revoke_session,
    update_groups,
    utcnow,
)
from core.identity import Principal
from core.limits import install_rate_limits

if TYPE_CHECKING:
    from core.services import Services

__all__ = [
    "install_auth",
    "logout_token_of",
    "principal_from_bearer",
    "principal_from_request",
    "wants_html",
]

log = logging.getLogger(__name__)
SESSION_COOKIE = "tenantllm_session"
PRINCIPAL_KEY = "tenantllm.principal"  # ASGI scope key: the principal of this request
RUNTIME_KEY = "tenantllm.auth"
SESSION_KEYS = ("sid", "sub")
API_PREFIXES = ("/v1/", "/gradio_api/", "/api/")


def wants_html(request: Request) -> bool:
    """Whether this is a person's browser asking for a page (redirect it to /login)."""
    if request.url.path.startswith(API_PREFIXES):
        return False
    return "text/html" in request.headers.get("accept", "")


def _runtime_of(request: Request) -> AuthRuntime | None:
    runtime = request.scope.get(RUNTIME_KEY)
    return runtime if isinstance(runtime, AuthRuntime) else active_runtime()


def principal_from_request(request: Request) -> Principal | None:
    """The signed-in person of this request (session cookie), or None. Sync and cheap.

    Normally computed once per request by the session middleware; otherwise read here.
    """
    if PRINCIPAL_KEY in request.scope:
        cached = request.scope[PRINCIPAL_KEY]
        return cached if isinstance(cached, Principal) else None
    runtime = _runtime_of(request)
    session = request.scope.get("session")
    if runtime is None or not isinstance(session, dict):
        return None
    secret = session.get("sid")
    record = load_session(runtime.services.settings, secret) if isinstance(secret, str) else None
    principal = (
        _principal_of(runtime, record) if record and not _stale(runtime, record, 2) else None
    )
    request.scope[PRINCIPAL_KEY] = principal
    return principal


def logout_token_of(request: Request | None) -> str:
    """The CSRF token the sign-out form of this request's session must send ('' if none)."""
    session = request.scope.get("session") if request is not None else None
    runtime = _runtime_of(request) if request is not None else None
    secret = session.get("sid") if isinstance(session, dict) else None
    if runtime is None or not isinstance(secret, str):
        return ""
    return csrf_token(runtime.services.settings, secret)


def _principal_of(runtime: AuthRuntime, record: SessionRecord) -> Principal:
    return runtime.user_principal(record.subject, record.email, record.name, record.groups)


def _stale(runtime: AuthRuntime, record: SessionRecord, intervals: int) -> bool:
    age = utcnow() - record.groups_refreshed_at
    return age >= timedelta(seconds=runtime.services.settings.groups_refresh_seconds * intervals)


def _audit(runtime: AuthRuntime, action: str, outcome: Any, **fields: Any) -> None:
    runtime.services.auditor.record(AuditEvent(action=action, outcome=outcome, **fields))


async def refresh_groups(runtime: AuthRuntime, record: SessionRecord) -> SessionRecord | None:
    """Re-read the user's groups from the IdP; None if the IdP ended the session."""
    idp, settings = runtime.idp, runtime.services.settings
    tokens = dict(record.tokens)
    try:
        try:
            claims = await idp.auserinfo(str(tokens.get("access_token", "")))
            new_tokens = None
        except IdpRefused:
            if not tokens.get("refresh_token"):
                raise
            fresh = await idp.arefresh(str(tokens["refresh_token"]))
            new_tokens = {**tokens, **{k: fresh[k] for k in fresh if k in _TOKEN_FIELDS}}
            claims = await idp.auserinfo(str(fresh["access_token"]))
        if claims.get("sub") != record.subject:
            raise IdpRefused("userinfo names another subject")
    except IdpRefused as exc:
        await asyncio.to_thread(revoke_session, settings, record.id)
        _audit(
            runtime,
            "session_end",
            "denied",
            user_sub=record.subject,
            user_email=record.email,
            status=401,
            error_class="IdpRefused",
            detail=f"identity provider refused the group refresh: {exc}",
        )
        return None
    except IdpUnavailable as exc:
        log.warning("groups of %s not refreshed (IdP unreachable: %s)", record.subject, exc)
        return record
    groups = groups_from_claims(claims, settings.oidc_groups_claim)
    await asyncio.to_thread(update_groups, settings, record.id, groups, new_tokens)
    return replace(record, groups=groups, groups_refreshed_at=utcnow())


_TOKEN_FIELDS = ("access_token", "refresh_token", "expires_at")  # never the ID token


async def session_principal(runtime: AuthRuntime, session: dict[str, Any]) -> Principal | None:
    """The principal of a session dict, refreshing its groups when they are due."""
    secret = session.get("sid")
    if not isinstance(secret, str):
        return None
    record = await asyncio.to_thread(load_session, runtime.services.settings, secret)
    if record is not None and _stale(runtime, record, 1):
        record = await refresh_groups(runtime, record)
    if record is None or _stale(runtime, record, 2):
        for key in SESSION_KEYS:  # the cookie names a dead session: drop it
            session.pop(key, None)
        return None
    return _principal_of(runtime, record)


class SessionPrincipalMiddleware:
    """Works out the principal once per request (async: may ask the IdP for groups)."""

    def __init__(self, app: ASGIApp, runtime: AuthRuntime) -> None:
        """Wrap `app`; must run inside SessionMiddleware."""
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Put the runtime and the request's principal into the ASGI scope."""
        if scope["type"] == "http":
            scope[RUNTIME_KEY] = self.runtime
            session = scope.get("session")
            if isinstance(session, dict):
                scope[PRINCIPAL_KEY] = await session_principal(self.runtime, session)
        await self.app(scope, receive, send)


def _allowed_hosts(services: Services) -> list[str]:
    hosts = list(services.settings.allowed_hosts)
    public = urlsplit(services.settings.public_url).hostname
    if public and public not in hosts:
        hosts.append(public)
    return hosts


def install_auth(app: FastAPI, services: Services, *, idp: IdentityProvider | None = None) -> None:
    """Add sign-in routes, sessions, bearer support, rate limits and TrustedHost to `app`."""
    from core.auth.routes import add_auth_routes, make_oauth_client

    settings = services.settings
    idp = idp or IdentityProvider(
        settings.oidc_issuer,
        settings.oidc_client_id,
        settings.oidc_client_secret,
        settings.oidc_audience,
    )
    refusals = RefusalLog(services.auditor, settings.refusal_audit_window_seconds)
    runtime = AuthRuntime(services=services, idp=idp, refusals=refusals)
    activate(runtime)
    app.state.auth = runtime
    install_rate_limits(app, services)
    add_auth_routes(app, runtime, make_oauth_client(settings))
    # Starlette runs the last added middleware first: TrustedHost, CORS, cross-origin
    # protection, sessions, then ours.
    app.add_middleware(SessionPrincipalMiddleware, runtime=runtime)
    app.add_middleware(
        SessionMiddleware,
        secret_key=settings.secret_key,
        session_cookie=SESSION_COOKIE,
        max_age=settings.session_max_age_seconds,
        same_site="lax",
        https_only=settings.mode == "production",
    )
    install_cross_site(app, settings)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=_allowed_hosts(services))
    services.groups.install_sighup()


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
