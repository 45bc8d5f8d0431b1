"""Request -> principal: the browser session's (cookie) or, through core/auth/bearer.py, a
bearer credential's.

- `session_middleware(settings, runtime)`: the two middlewares that make sessions work, in
  their order: Starlette `SessionMiddleware` (signed cookie: HttpOnly, SameSite=Lax, Secure in
  production) holding only a random session secret and the subject (the session itself is a
  database row, core/auth/sessions.py, so sign-out also kills copies of the cookie), then
  `SessionPrincipalMiddleware`, which puts the app's `AuthRuntime` and the request's principal
  into the ASGI scope. core/server.py places them in the app's stack.
- The principal middleware re-reads the user's groups from the IdP (userinfo, or the refresh
  token when the access token expired) every `groups_refresh_seconds`; if the IdP refuses, the
  session ends (audited); if it is unreachable, the old groups stay valid for one more
  interval, then the user must sign in again.
- `principal_from_request(request)` reads the principal the middleware computed (sync, cheap:
  Gradio calls it on every route); `logout_token_of(request)` the sign-out form's CSRF token.
The sign-in routes are core/auth/routes.py.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import timedelta
from typing import Any

from fastapi import Request
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from core.audit.auditor import AuditEvent
from core.auth.bearer import AuthRuntime
from core.auth.idp import IdpRefused, IdpUnavailable, groups_from_claims
from core.auth.sessions import (
    SessionRecord,
    csrf_token,
    load_session,
    revoke_session,
    update_groups,
    utcnow,
)
from core.config import Settings
from core.identity import Principal

__all__ = [
    "logout_token_of",
    "principal_from_request",
    "runtime_of",
    "session_middleware",
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


def runtime_of(request: Request) -> AuthRuntime | None:
    """The auth state of the app this request came in through (None: no sign-in there).

    Read from the ASGI scope, where `SessionPrincipalMiddleware` put it, not from
    `request.app`: inside the mounted Gradio app `request.app` is Gradio's own app.
    """
    runtime = request.scope.get(RUNTIME_KEY)
    return runtime if isinstance(runtime, AuthRuntime) else None


def principal_from_request(request: Request) -> Principal | None:
    """The signed-in person of this request (session cookie), or None. Sync and cheap.

    Normally computed once per request by the session middleware; otherwise read here.
    """
    if PRINCIPAL_KEY in request.scope:
        cached = request.scope[PRINCIPAL_KEY]
        return cached if isinstance(cached, Principal) else None
    runtime = runtime_of(request)
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
    runtime = runtime_of(request) if request is not None else None
    secret = session.get("sid") if isinstance(session, dict) else None
    if runtime is None or not isinstance(secret, str):
        return ""
    return csrf_token(runtime.services.settings, secret)


def _principal_of(runtime: AuthRuntime, record: SessionRecord) -> Principal:
    return runtime.user_principal(record.subject, record.email, record.name, record.groups)


def _stale(runtime: AuthRuntime, record: SessionRecord, intervals: int) -> bool:
    age = utcnow() - record.groups_refreshed_at
    return age >= timedelta(seconds=runtime.services.settings.groups_refresh_seconds * intervals)


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
        # No request here (the refresh runs for the session, not for one caller's call).
        runtime.services.auditor.record(
            AuditEvent.from_request(
                None,
                action="session_end",
                outcome="denied",
                user_sub=record.subject,
                user_email=record.email,
                status=401,
                error_class="IdpRefused",
                detail=f"identity provider refused the group refresh: {exc}",
            )
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
        if scope["type"] in ("http", "websocket"):
            scope[RUNTIME_KEY] = self.runtime
        session = scope.get("session")
        if scope["type"] == "http" and isinstance(session, dict):
            scope[PRINCIPAL_KEY] = await session_principal(self.runtime, session)
        await self.app(scope, receive, send)


def session_middleware(settings: Settings, runtime: AuthRuntime) -> list[Middleware]:
    """The signed session cookie, then the principal it names (outermost first)."""
    return [
        Middleware(
            SessionMiddleware,
            secret_key=settings.secret_key,
            session_cookie=SESSION_COOKIE,
            max_age=settings.session_max_age_seconds,
            same_site="lax",
            https_only=settings.secure_cookies,  # production, or TLS served by the app itself
        ),
        Middleware(SessionPrincipalMiddleware, runtime=runtime),
    ]
