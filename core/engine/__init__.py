"""The engine: one shared engine per process behind one interface, for both backends.

- `base`: the `Engine` interface, generation parameters and chunks, the prefix-cache salt,
  and `create_engine(settings)`, which picks the backend.
- `inprocess`: backend `vllm`, vLLM's `AsyncLLM` in this process (not named `vllm.py`, so it
  never shadows the `vllm` package).
- `remote`: backend `openai`, a remote OpenAI-compatible vLLM server.
- `model`: the model the engine serves (`python -m core.engine.model` prepares the bundled one).

Only `Engine` and `create_engine` are re-exported here; `base` imports no backend at import
time (each backend is imported inside `create_engine`), so importing this package stays cheap.
"""

from core.engine.base import Engine, create_engine

__all__ = ["Engine", "create_engine"]
