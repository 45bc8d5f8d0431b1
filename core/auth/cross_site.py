"""Cross-site requests: CORS for configured origins only, and no cross-origin state changes.

Two layers, both from `cross_site_middleware` (core/server.py puts them in the app's stack):

- CORS: Starlette's `CORSMiddleware` with `Settings.cors_origins` (empty by default: same
  origin only). Its presence also switches off Gradio's own `CustomCORSMiddleware`, which
  reflects ANY `Origin` with credentials whenever the Host is not localhost (gradio 6.31,
  route_utils.py) - so a page on another site could read a signed-in person's answers.
- `CrossOriginProtection`: a POST/PUT/PATCH/DELETE from a browser page of another origin is
  refused with 403 before it reaches a route, whatever the route is (Gradio's upload and
  queue routes included). This is the check Go 1.25 ships as `http.CrossOriginProtection`
  (after Filippo Valsorda's "CSRF" write-up): trust `Sec-Fetch-Site` (sent by every current
  browser), else compare `Origin` with `Host`; requests with neither are not from a browser
  form. Requests that carry `Authorization` are exempt: no browser attaches one to a
  cross-site request by itself, and CORS decides whether a page may send one.
`/logout` also needs a CSRF token (core/auth/routes.py), for browsers that send neither header.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from core.config import Settings

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SAME_ORIGIN_FETCH = frozenset({"same-origin", "none"})  # "none": typed URL, bookmark


def origin_of(url: str) -> str:
    """`scheme://host[:port]` of a URL ('' if it has none)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else ""


class CrossOriginProtection:
    """Refuse state-changing requests that a page of another origin made the browser send."""

    def __init__(self, app: ASGIApp, trusted_origins: list[str]) -> None:
        """Wrap `app`; `trusted_origins` may send state-changing requests too."""
        self.app = app
        self.trusted = {o.lower().rstrip("/") for o in trusted_origins if o}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, or answer 403 if it is a cross-origin state change."""
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        if not self.allowed(Headers(scope=scope)):
            response = PlainTextResponse(
                "Cross-origin request refused: this action must come from the app's own pages.",
                status_code=403,
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def allowed(self, headers: Headers) -> bool:
        """Whether a state-changing request with these headers may proceed."""
        if "authorization" in headers:
            return True
        origin = headers.get("origin", "").lower().rstrip("/")
        if origin and origin in self.trusted:
            return True
        fetch_site = headers.get("sec-fetch-site")
        if fetch_site is not None:
            return fetch_site in SAME_ORIGIN_FETCH
        if not origin:
            return True  # neither header: not a browser (curl, an SDK), or a very old one
        return origin.split("://", 1)[-1] == headers.get("host", "").lower()


def cross_site_middleware(settings: Settings) -> list[Middleware]:
    """CORS (configured origins only), then cross-origin protection (outermost first)."""
    origins = list(settings.cors_origins)
    public = origin_of(settings.public_url)
    return [
        # First: a preflight from an allowed origin is answered before the protection runs.
        Middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_credentials=True,
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type"],
        ),
        Middleware(CrossOriginProtection, trusted_origins=[*origins, public]),
    ]
