"""The ASGI guard in front of the Gradio app: allow-list, session binding, file ownership.

Runs for every request that reaches the Gradio mount (the app's own routes, /v1, /login, ...
are matched before it), after the session middleware, so the principal is known. In order:
1. a route not in `routes.ALLOWED` -> 404 (audited when someone is signed in);
2. a non-public route without a signed-in principal -> 401;
3. per kind: deep links refused; session hashes bound to their first principal; uploads
   only for principals who may upload somewhere, with size and count caps; `file=` and file
   inputs only for files the caller was handed (core/ui/gradio_guard/uploads.py).
Every refusal of step 3 and every accepted upload is audited.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from starlette._utils import get_route_path
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.auth.principal import principal_from_request
from core.errors import (
    NotAuthenticated,
    NotFound,
    RequestTooLarge,
    TenantLLMError,
)
from core.identity import Principal
from core.services import Services
from core.ui.gradio_guard import events, payloads
from core.ui.gradio_guard.routes import Rule, allowed_rule
from core.ui.gradio_guard.sessions import SessionBindings
from core.ui.gradio_guard.upload_route import UploadRoute
from core.ui.gradio_guard.uploads import UploadRegistry, real_path
from core.web import error_response

MAX_EVENT_BODY = 8 * 1024 * 1024  # a queue/join or cancel body: JSON, kept in memory
FILE_PREFIX = "/gradio_api/file="


class _BodyOverCap(Exception):
    """An event body over `MAX_EVENT_BODY`."""


class GradioGuard:
    """Wraps the mounted Gradio app; see the module docstring for what it refuses."""

    def __init__(
        self,
        app: ASGIApp,
        services: Services,
        registry: UploadRegistry,
        static_files: Iterable[str] = (),
    ) -> None:
        """Guard `app`; `static_files` are the only files outside uploads `file=` serves."""
        self.app = app
        self.services = services
        self.registry = registry
        self.sessions = SessionBindings()
        self.static_files = frozenset(real_path(p) for p in static_files)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse, check or pass one request (see the module docstring)."""
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # Gradio 6 speaks no websocket to the page
            await send({"type": "websocket.close", "code": 1008})
            return
        path = get_route_path(scope)
        rule = allowed_rule(scope["method"], path)
        principal = _principal(scope)
        if rule is None:
            # A teammate probing Gradio's routes is worth a row; a signed-out caller is not.
            await self._not_found(
                principal, "ui_route", f"refused {path}", "Not found.", scope, receive, send
            )
            return
        if principal is None and not rule.public:
            err = NotAuthenticated("Sign in first (your session may have ended).")
            await _answer(scope, receive, send, err)
            return
        await self._dispatch(rule, path, principal, scope, receive, send)

    async def _dispatch(
        self,
        rule: Rule,
        path: str,
        principal: Principal | None,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        if principal is None or rule.kind == "plain":
            await self.app(scope, receive, send)
        elif rule.kind == "page":
            await self._page(principal, scope, receive, send)
        elif rule.kind == "heartbeat":
            await self._bound(principal, path.rsplit("/", 1)[-1], scope, receive, send)
        elif rule.kind == "data":
            await self._queue_data(principal, scope, receive, send)
        elif rule.kind in ("join", "cancel"):
            await self._event_body(principal, rule.kind == "join", scope, receive, send)
        elif rule.kind == "upload":
            await self._upload(principal, scope, receive, send)
        else:
            await self._file(principal, path.removeprefix(FILE_PREFIX), scope, receive, send)

    # --- pages, sessions, events ---------------------------------------------------------
    async def _page(self, principal: Principal, scope: Scope, receive: Receive, send: Send) -> None:
        if payloads.has_query(scope, "deep_link"):  # deep links are off: no state by link
            message = "Links to a saved page state are off."
            await self._not_found(
                principal, "ui_deep_link", "deep link refused", message, scope, receive, send
            )
            return
        await self.app(scope, receive, send)

    async def _bound(
        self,
        principal: Principal,
        session_hash: str | None,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        if await self._claimed(principal, session_hash, scope, receive, send):
            await self.app(scope, receive, send)

    async def _claimed(
        self, principal: Principal, session_hash: Any, scope: Scope, receive: Receive, send: Send
    ) -> bool:
        """Whether the session hash is this principal's (else refused, audited, answered)."""
        if not isinstance(session_hash, str) or not session_hash:
            return True  # none given: Gradio refuses the request itself
        if self.sessions.claim(session_hash, principal.subject):
            return True
        detail = "session of someone else"
        await self._not_found(
            principal, "ui_session", detail, "No such session.", scope, receive, send
        )
        return False

    async def _queue_data(
        self, principal: Principal, scope: Scope, receive: Receive, send: Send
    ) -> None:
        try:
            session_hash = payloads.query_value(scope, "session_hash")
        except payloads.RepeatedParameter:
            detail = "session_hash repeated"
            await self._not_found(
                principal, "ui_session", detail, "No such session.", scope, receive, send
            )
            return
        if not await self._claimed(principal, session_hash, scope, receive, send):
            return
        folder = self.registry.folder().encode()
        pending = b""

        async def observing_send(message: Message) -> None:
            # Files sent to this session (an export, say) become readable by its principal.
            nonlocal pending
            if message["type"] == "http.response.body":
                pending += message.get("body", b"")
                done, _, pending = pending.rpartition(b"\n\n")
                if folder in done:
                    self._grant_outputs(principal, done)
            await send(message)

        await self.app(payloads.without_compression(scope), receive, observing_send)

    def _grant_outputs(self, principal: Principal, chunk: bytes) -> None:
        paths = [
            p
            for message in payloads.sse_messages(chunk)
            for p in payloads.file_paths(message, only_file_data=True)
            if self.registry.inside(p)
        ]
        self.registry.grant(principal.subject, paths)

    async def _event_body(
        self, principal: Principal, join: bool, scope: Scope, receive: Receive, send: Send
    ) -> None:
        try:
            body = await _read_body(receive, MAX_EVENT_BODY)
        except _BodyOverCap:
            err = RequestTooLarge("This request is too large; send a shorter message.")
            await _answer(scope, receive, send, err)
            return
        data = payloads.json_body(body) or {}
        if not await self._claimed(principal, data.get("session_hash"), scope, receive, send):
            return
        foreign = [p for p in self._inputs(data) if not self.registry.owns(principal.subject, p)]
        if join and foreign:
            detail = f"file input not handed to this user: {os.path.basename(foreign[0])}"
            message = "That file is not yours to use."
            await self._not_found(principal, "ui_file", detail, message, scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    def _inputs(self, data: dict[str, Any]) -> list[str]:
        # A URL as a file input would make Gradio download it into the upload folder, past
        # the upload route's role check, caps and audit: it counts as a file to check (and
        # no one owns it).
        found = payloads.file_paths(data.get("data"), only_file_data=False)
        return [p for p in found if "://" in p or self.registry.inside(p)]

    # --- files ---------------------------------------------------------------------------
    async def _file(
        self, principal: Principal, target: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        wanted = real_path(target) if target.startswith("/") else ""
        mine = self.registry.inside(wanted) and self.registry.owns(principal.subject, wanted)
        if wanted in self.static_files or mine:
            await self.app(scope, receive, send)
            return
        detail = f"file not handed to this user: {os.path.basename(target)[:200]}"
        await self._not_found(principal, "ui_file", detail, "No such file.", scope, receive, send)

    async def _upload(
        self, principal: Principal, scope: Scope, receive: Receive, send: Send
    ) -> None:
        route = UploadRoute(self.services, self.registry, principal, scope)
        await route.run(self.app, receive, send)

    async def _not_found(
        self,
        principal: Principal | None,
        action: str,
        detail: str,
        message: str,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        """Answer 404 (`message`) and audit the refusal (`detail`) if someone is signed in."""
        if principal is not None:
            events.record(self.services, scope, principal, action, "denied", 404, detail)
        await _answer(scope, receive, send, NotFound(message))


def _principal(scope: Scope) -> Principal | None:

    return principal_from_request(Request(scope))


async def _answer(scope: Scope, receive: Receive, send: Send, err: TenantLLMError) -> None:
    await error_response(err)(scope, receive, send)


async def _read_body(receive: Receive, cap: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            raise _BodyOverCap
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # afterwards: the client's disconnect

    return replay
