"""The engine: one shared engine per process behind one interface, for both backends.

- `base`: the `Engine` interface, a request's `EngineOptions` (tenant, user, caps, priority),
  generation parameters and chunks, the prefix-cache salt.
- `inprocess`: backend `vllm`, vLLM's `AsyncLLM` in this process (not named `vllm.py`, so it
  never shadows the `vllm` package); `build_async_llm` builds the bare `AsyncLLM` with the
  product's arguments (benchmarks compare against it).
- `remote`: backend `openai`, a remote OpenAI-compatible vLLM server.
- `model`: the model the engine serves (`python -m core.engine.model` prepares the bundled one).

`create_engine(settings)` (here) picks the backend. It imports the chosen one only when
called: importing vLLM takes seconds and a host that serves through a remote engine need
not have it installed. So importing this package stays cheap, and the backends import `base`,
never this package (no cycle).
"""

from core.config import Settings
from core.engine.base import Engine
from core.errors import ConfigError

__all__ = ["Engine", "create_engine"]


def create_engine(settings: Settings) -> Engine:
    """The engine for `settings.engine_backend` (not started: await `start()`)."""
    if settings.engine_backend == "vllm":
        from core.engine.inprocess import VLLMEngine  # lazy: see the module docstring

        return VLLMEngine(settings)
    if settings.engine_backend == "openai":
        from core.engine.remote import RemoteEngine  # lazy: see the module docstring

        return RemoteEngine(settings)
    raise ConfigError(f"TENANTLLM_ENGINE_BACKEND: unknown backend {settings.engine_backend!r}.")
