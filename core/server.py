"""The web application: FastAPI with sign-in, the OpenAI-compatible API and the Gradio UI.

`create_app(settings)` wires the parts; the lifespan starts the audit writer, ingests the demo
documents once and starts the shared engine in the background, so `/healthz` answers at
once and `/readyz` turns ready when the engine is.

The whole middleware stack is `middleware_stack` (outermost first, each with why it sits
where it does) and the exception handlers are `EXCEPTION_HANDLERS`; create_app passes both to
FastAPI, and tests/fixtures/oidc.py builds its sign-in test app from the same two.

The HTTP side of rate limits lives here too: the slowapi `Limiter` (`http_limiter`: the
sign-in routes' per-address limit, keyed by `principal_key` otherwise) and its 429 handler
(`rate_limit_refused`, audited). They belong to the app, not to core/limits.py: slowapi finds
its limiter at `app.state.limiter`, the handler is one of the app's, and the key reads the
principal that the app's session middleware computed. core/limits.py keeps the counters and
generation slots that every channel (UI, API, CLI) shares.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from slowapi import Limiter, _rate_limit_exceeded_handler
from slowapi.errors import RateLimitExceeded
from slowapi.util import get_remote_address
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.middleware.trustedhost import TrustedHostMiddleware

from core.api.body import BodyLimit
from core.api.errors import fallback_router as api_fallback_router
from core.api.routes import router as api_router
from core.audit.auditor import AuditEvent, caller_of
from core.auth.bearer import AuthRuntime, build_auth_runtime, record_refusal
from core.auth.cross_site import cross_site_middleware
from core.auth.principal import principal_from_request, session_middleware, wants_html
from core.auth.routes import add_auth_routes, make_oauth_client
from core.config import Settings
from core.errors import NotAuthenticated, NotFound, TenantLLMError
from core.identity import Principal
from core.knowledge import parsing
from core.metrics import CONTENT_TYPE, HttpMetrics, check_scrape_token, serve_metrics
from core.retention.job import start_retention_job
from core.security_headers import security_headers_middleware
from core.services import Services, build_services
from core.ui import mount_ui
from core.web import error_response

log = logging.getLogger(__name__)


class EngineState:
    """Where the background start (engine, then demo documents and stores) stands."""

    def __init__(self) -> None:
        self.error: str | None = None
        self.started = False  # engine up, demo documents in, stores open: ready for users
        self.task: asyncio.Task[None] | None = None


async def _prepare_knowledge(services: Services) -> None:
    try:
        await asyncio.to_thread(services.knowledge.ensure_demo_documents)
    except Exception:  # missing demo documents must not keep the app from serving
        log.exception("demo documents could not be ingested")
    await asyncio.to_thread(services.knowledge.open_stores)
    await asyncio.to_thread(parsing.start_parser)


async def _start_engine(services: Services, state: EngineState) -> None:
    try:
        # Engine first, demo documents after: both import transformers, and two threads
        # importing it at once fail ("cannot import name ... from transformers").
        if services.engine is not None:
            await services.engine.start()
            log.info("engine ready: %s", services.settings.model)
        await _prepare_knowledge(services)
        # After the demo documents: the worker embeds too (one transformers import at a time).
        services.ingest_jobs.start()
        state.started = True
    except Exception as exc:  # the app keeps serving; /readyz says why it is not ready
        state.error = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        log.exception("engine failed to start")


def _lifespan(services: Services, state: EngineState):  # type: ignore[no-untyped-def]
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # First: an address that cannot be bound stops the start before anything runs.
        listen = services.settings.metrics_listen
        stop_metrics = serve_metrics(services.metrics, listen) if listen else None
        await services.auditor.start()
        state.task = asyncio.create_task(_start_engine(services, state))
        await services.siem.start()  # audit rows to the SIEM, alert rules (core/siem/)
        retention = start_retention_job(services)  # the daily pass (core/retention/job.py)
        try:
            yield
        finally:
            if stop_metrics is not None:
                stop_metrics()
            if state.task and not state.task.done():
                state.task.cancel()
            if retention is not None:
                retention.cancel()
            # A job still running is resumed at the next start (core/knowledge/ingest_worker.py).
            await asyncio.to_thread(services.ingest_jobs.stop)
            await services.siem.stop()
            if services.engine is not None:
                await services.engine.stop()
            # This replica's leases of the team caps go back now, not when they expire.
            await services.scheduler.close()
            if services.redis is not None:
                await services.redis.aclose()
            await services.auditor.stop()

    return lifespan


def _add_health_routes(app: FastAPI, services: Services, state: EngineState) -> None:
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        """The engine is ready to generate (load balancers route traffic on this)."""
        engine = services.engine
        if state.started and (engine is None or engine.ready):
            return JSONResponse({"status": "ready", "model": services.settings.model})
        status = "failed" if state.error else "starting"
        return JSONResponse({"status": status, "error": state.error}, status_code=503)


def _add_metrics_route(app: FastAPI, services: Services, auth: AuthRuntime) -> None:
    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        """Prometheus scrape (core/metrics.py): only with the metrics token; 404 while unset."""
        try:
            token = services.settings.metrics_token
            check_scrape_token(request.headers.get("authorization"), token)
        except NotAuthenticated as err:  # audited like a bad API key, flood-proof
            record_refusal(auth, err, *caller_of(request), action="metrics")
            return error_response(err)
        except NotFound as err:
            return error_response(err)
        return Response(services.metrics.render(), media_type=CONTENT_TYPE)


# --- rate limits of HTTP routes (slowapi) ----------------------------------------------


def principal_key(request: Request) -> str:
    """slowapi key: the authenticated principal; the peer address only when there is none."""
    principal = _principal_of(request)
    if principal is not None:
        return f"principal:{principal.subject}"
    return f"ip:{get_remote_address(request)}"  # the socket peer, not X-Forwarded-For


def _principal_of(request: Request) -> Principal | None:
    # A bearer principal (API routes) is on request.state; a browser's is in the session.
    principal = getattr(request.state, "principal", None)
    return principal if isinstance(principal, Principal) else principal_from_request(request)


def http_limiter(settings: Settings, key_prefix: str) -> Limiter:
    """The app's slowapi limiter (Redis when configured), answering with x-ratelimit-* headers.

    While Redis does not answer, slowapi counts in this process's memory (and tries Redis
    again), as the chat limits do (core/limits.py): sign-in keeps working, limited per replica.
    """
    return Limiter(
        key_func=principal_key,
        headers_enabled=True,
        storage_uri=settings.redis_url or "memory://",
        key_prefix=key_prefix,
        in_memory_fallback_enabled=bool(settings.redis_url),
    )


async def rate_limit_refused(request: Request, exc: Exception) -> Response:
    """A 429 from a slowapi limit: Retry-After and x-ratelimit-* headers, and audited."""
    assert isinstance(exc, RateLimitExceeded)
    response = _rate_limit_exceeded_handler(request, exc)
    request.app.state.services.auditor.record(
        AuditEvent.from_request(
            request,
            action=f"http:{request.url.path}"[:64],
            outcome="rate_limited",
            principal=_principal_of(request),
            status=429,
            error_class="RateLimitExceeded",
            detail=str(exc.detail)[:500],
        )
    )
    return response


async def user_error(request: Request, exc: Exception) -> Response:
    """A `TenantLLMError` outside the API's route class: the one OpenAI error body.

    Also `RateLimited` from `Limits.check` / `generation_slot` (with Retry-After); whoever
    raised it has audited it.
    """
    assert isinstance(exc, TenantLLMError)
    return error_response(exc)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    TenantLLMError: user_error,
    RateLimitExceeded: rate_limit_refused,
}


# --- the middleware stack ----------------------------------------------------------------

_OPEN_PATHS = (
    "/login",
    "/auth/",
    "/logout",
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/",
    "/openapi.json",
    "/assets/",
)


async def redirect_signed_out_browsers(
    request: Request, call_next: RequestResponseEndpoint
) -> Response:
    """A signed-out person asking for a page gets the sign-in page.

    Gradio answers 401 JSON to signed-out users, which a person cannot read.
    """
    if (
        request.method == "GET"
        and not request.url.path.startswith(_OPEN_PATHS)
        and wants_html(request)
        and principal_from_request(request) is None
    ):
        return RedirectResponse("/login", status_code=302)
    return await call_next(request)


def allowed_hosts(settings: Settings) -> list[str]:
    """`Settings.allowed_hosts`, plus the host of `Settings.public_url`."""
    hosts = list(settings.allowed_hosts)
    public = urlsplit(settings.public_url).hostname
    if public and public not in hosts:
        hosts.append(public)
    return hosts


def middleware_stack(settings: Settings, auth: AuthRuntime) -> list[Middleware]:
    """Every middleware of the app, outermost (runs first on a request) first."""
    return [
        # Outermost, so every request is counted (refusals of every layer below too).
        Middleware(HttpMetrics),
        # Next, so its headers reach every response: errors and refusals of every
        # layer below, the API, the sign-in pages and the Gradio app.
        security_headers_middleware(settings),
        # A request for a host we do not serve is refused before anything else runs.
        Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(settings)),
        # CORS answers preflights, then cross-origin state changes are refused: both before
        # a session is loaded or any route (Gradio's included) sees the request.
        *cross_site_middleware(settings),
        # The session cookie, then the principal it names (may refresh groups at the IdP);
        # everything below may read the principal.
        *session_middleware(settings, auth),
        # Needs the principal, so inside the sessions.
        Middleware(BaseHTTPMiddleware, dispatch=redirect_signed_out_browsers),
        # Innermost, around the routes that read bodies; its 413 still gets the headers.
        Middleware(BodyLimit, max_bytes=settings.api_max_body_bytes),
    ]


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    """Build the whole web application for `settings`."""
    services = services or build_services(settings, with_engine=True)
    state = EngineState()
    auth = build_auth_runtime(services)  # this app's sign-in state: no process-wide global
    app = FastAPI(
        title="tenantllm",
        description="OpenAI-compatible API of tenantllm: one model per tenant (team).",
        lifespan=_lifespan(services, state),
        # Swagger UI and ReDoc load their scripts from a CDN: offline and under the CSP they
        # are blank pages. The schema stays at /openapi.json.
        docs_url=None,
        redoc_url=None,
        middleware=middleware_stack(settings, auth),
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.services = services
    app.state.engine_state = state
    app.state.auth = auth
    app.state.metrics = services.metrics  # core.metrics.HttpMetrics finds it here
    app.state.limiter = http_limiter(settings, services.limits.key_prefix)  # slowapi looks here
    _add_health_routes(app, services, state)
    _add_metrics_route(app, services, auth)
    add_auth_routes(app, auth, make_oauth_client(settings), app.state.limiter)
    app.include_router(api_router)
    app.include_router(api_fallback_router)  # after every /v1 route: OpenAI-shaped 404/405
    services.groups.install_sighup()
    return mount_ui(app, services)
