"""The web application: FastAPI with sign-in, the OpenAI-compatible API and the Gradio UI.

`create_app(settings)` wires the parts; the lifespan starts the audit writer, ingests the demo
documents once and starts the shared engine in the background, so `/healthz` answers at
once and `/readyz` turns ready when the engine is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from core.api.errors import error_response
from core.config import Settings
from core.errors import TenantLLMError
from core.knowledge import parsing
from core.security_headers import install_security_headers
from core.services import Services, build_services

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
        state.started = True
    except Exception as exc:  # the app keeps serving; /readyz says why it is not ready
        state.error = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        log.exception("engine failed to start")


def _lifespan(services: Services, state: EngineState):  # type: ignore[no-untyped-def]
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await services.auditor.start()
        state.task = asyncio.create_task(_start_engine(services, state))
        try:
            yield
        finally:
            if state.task and not state.task.done():
                state.task.cancel()
            if services.engine is not None:
                await services.engine.stop()
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


def _add_error_handler(app: FastAPI) -> None:
    @app.exception_handler(TenantLLMError)
    async def user_error(request: Request, exc: TenantLLMError) -> Response:
        return error_response(exc)  # the one OpenAI error body (core/api/errors.py)


def _add_login_redirect(app: FastAPI) -> None:
    from core.auth.principal import principal_from_request, wants_html

    open_paths = (
        "/login",
        "/auth/",
        "/logout",
        "/healthz",
        "/readyz",
        "/v1/",
        "/openapi.json",
        "/assets/",
    )

    @app.middleware("http")
    async def redirect_signed_out_browsers(request: Request, call_next):  # type: ignore[no-untyped-def]
        # Gradio answers 401 JSON to signed-out users; a person should see the sign-in page.
        path = request.url.path
        if (
            request.method == "GET"
            and not path.startswith(open_paths)
            and wants_html(request)
            and principal_from_request(request) is None
        ):
            return RedirectResponse("/login", status_code=302)
        return await call_next(request)


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    """Build the whole web application for `settings`."""
    from core.api.body import BodyLimit
    from core.api.errors import fallback_router as api_fallback_router
    from core.api.routes import router as api_router
    from core.auth.principal import install_auth
    from core.ui import mount_ui

    services = services or build_services(settings, with_engine=True)
    state = EngineState()
    app = FastAPI(
        title="tenantllm",
        description="OpenAI-compatible API of tenantllm: one model per tenant (team).",
        lifespan=_lifespan(services, state),
        # Swagger UI and ReDoc load their scripts from a CDN: offline and under the CSP they
        # are blank pages. The schema stays at /openapi.json.
        docs_url=None,
        redoc_url=None,
    )
    app.state.services = services
    app.state.engine_state = state
    _add_error_handler(app)
    _add_health_routes(app, services, state)
    app.include_router(api_router)
    app.include_router(api_fallback_router)  # after every /v1 route: OpenAI-shaped 404/405
    app.add_middleware(BodyLimit, max_bytes=settings.api_max_body_bytes)
    _add_login_redirect(app)
    install_auth(app, services)
    # Last middleware added = outermost: the headers reach every response, errors included.
    install_security_headers(app, settings)
    return mount_ui(app, services)
