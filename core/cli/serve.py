"""`tenantllm serve`: start the web app (what `make run` and `python app.py` do)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click
import uvicorn

from core.auth.demo_idp import DEMO_USERS, start_demo_idp
from core.cli.base import configure_logging, main, user_errors
from core.cli.tls import tls_context
from core.config import Settings, get_settings
from core.datadir import prepare_private_data_dir
from core.engine.model import resolve_model
from core.log_redaction import install_log_redaction, uvicorn_log_config


@contextlib.contextmanager
def identity_provider(settings: Settings) -> Iterator[Settings]:
    """The configured IdP, or (when none is configured) the local demo provider."""
    if settings.oidc_issuer:
        yield settings
        return
    with start_demo_idp(settings.demo_idp_port) as issuer:
        click.echo(f"Demo identity provider (for trying out only): {issuer}")
        click.echo("Sign in with one of these user names (no password):")
        for user in DEMO_USERS:
            click.echo(f"  {user.sub:<8} {user.description}")
        yield settings.model_copy(update={"oidc_issuer": issuer})


def serve_app(settings: Settings) -> None:
    """Run the app with uvicorn until Ctrl-C; the engine is stopped on the way out."""
    tls = tls_context(settings)  # a wrong certificate or key is a clear error before anything
    # Lazy: core.server imports the UI (gradio, ~9 s); no other command should wait for it.
    from core.server import create_app

    if settings.engine_backend == "vllm":  # a remote engine serves its own model (it tokenizes)
        resolve_model(settings)  # a wrong model path is a clear error now, not in the background
    prepare_private_data_dir(settings.data_dir)  # 0700, and Gradio's temp dir inside it
    with identity_provider(settings) as effective:
        app = create_app(effective)
        install_log_redaction()  # handlers configured so far (ours, vLLM's): no secrets
        click.echo(f"tenantllm is starting: open {effective.base_url} in your browser.")
        click.echo(f"Readiness: {effective.base_url}/readyz (the engine needs ~30 s on 2 cores)")
        # One worker: the engine lives in this process (several workers = several engines).
        uvicorn.run(
            app,
            host=effective.host,
            port=effective.port,
            log_level=effective.log_level.lower(),
            # The access log prints query strings (sign-in codes, session hashes): redacted.
            log_config=uvicorn_log_config(),
            timeout_graceful_shutdown=10,
            # None: plain HTTP. uvicorn calls the factory once, at start.
            ssl_context_factory=(lambda _config, _default: tls) if tls else None,
        )


@main.command()
@click.option("--host", default=None, help="Bind address (default: TENANTLLM_HOST).")
@click.option("--port", type=int, default=None, help="Port (default: TENANTLLM_PORT).")
@user_errors
def serve(host: str | None, port: int | None) -> None:
    """Start the web app: chat UI, OpenAI-compatible API, sign-in."""
    settings = get_settings()
    updates = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = settings.model_copy(update=updates)
    configure_logging(settings.log_level)
    install_log_redaction()
    serve_app(settings)
