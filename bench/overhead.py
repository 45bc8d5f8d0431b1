"""Benchmark 1: what the product adds on top of raw vLLM.

(a) `AsyncLLM` driven directly, built by the product's own engine builder (so the engine
    arguments are exactly the product's), with the same rendered prompt token ids;
(b) a full chat turn over HTTP: `POST /v1/chat/completions` with `stream: true` and an API key
    against `tenantllm serve` in a subprocess (bearer auth, RBAC, rate limits, retrieval call,
    prompt template and hooks, generation slot, engine, SSE, audit).

Retrieval is off: the app runs with a `bench` tenant, registered through the plugin manager,
whose retriever returns nothing (the retrieval call, its registry lookup and the rest of the
turn still run). Same questions, greedy decoding with a fixed seed, fixed `max_tokens`; tokens
actually produced are counted. The two sides never run at once: the app's engine sits idle
(its CPU use is recorded) while (a) runs and vice versa, alternating A-B then B-A per
concurrency level, so slow drift of the machine hits both alike.

`python -m bench.overhead serve` is the app subprocess: `tenantllm serve` plus the bench tenant.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    BenchContext,
    BenchResult,
    LoadResult,
    RequestStats,
    Table,
    closed_loop,
    free_port,
    percentile,
    ratio,
    target,
    tree_cpu_seconds,
)
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
    import core.engine_vllm as ev

    saved = ev.GIB
    ev.GIB = saved // fraction_divisor
    try:
        yield
    finally:
        ev.GIB = saved


def build_raw_engine(settings: Any) -> Any:
    """A bare `AsyncLLM` with exactly the product's engine arguments (VLLMEngine._build)."""
    from core.engine_vllm import VLLMEngine
    from core.model import resolve_model

    return VLLMEngine(settings)._build(resolve_model(settings))


def raw_prompt(llm: Any, messages: list[dict[str, str]]) -> tuple[list[int], str]:
    """Token ids and text of `messages` after the chat template, as the product renders them."""
    tokenizer = llm.get_tokenizer()
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer.encode(text, add_special_tokens=False)), text


async def raw_request(
    llm: Any, prompt: tuple[list[int], str], max_tokens: int, seed: int, priority: int = 0
) -> RequestStats:
    """One streamed request straight to AsyncLLM: TTFT, tokens produced, latency."""
    from vllm import SamplingParams
    from vllm.inputs.engine import tokens_input

    sampling = SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=seed)
    started = time.perf_counter()
    ttft, tokens = float("nan"), 0
    async for out in llm.generate(
        tokens_input(prompt[0], prompt=prompt[1]), sampling, uuid.uuid4().hex, priority=priority
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
class AppProcess:
    """`python -m bench.overhead serve` on a scratch data dir, with an API key for `bench`."""

    def __init__(self, work: Path, model_dir: Path, extra_env: dict[str, str] | None = None):
        from core.apikeys import create_key
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
        settings = Settings(data_dir=self.data_dir, model=str(model_dir))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade_database(settings.resolved_database_url)
        self.api_key = create_key(settings, tenant_id=BENCH_TENANT, created_by="bench").secret
        self.log_path = work / "app-server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 600) -> float:
        """Start the server and wait until /readyz; returns the seconds it took."""
        import httpx

        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.overhead", "serve"],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError("app exited early:\n" + self.log_path.read_text()[-3000:])
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - started
            time.sleep(1)
        raise RuntimeError("app not ready in time:\n" + self.log_path.read_text()[-3000:])

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


async def http_request(
    client: Any, api_key: str, question: str, max_tokens: int, seed: int, model: str = BENCH_TENANT
) -> RequestStats:
    """One streamed chat completion: TTFT = first content delta; tokens from `usage`."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
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


# --- the benchmark ---------------------------------------------------------------------------
def _summary(runs: list[LoadResult]) -> dict[str, float]:
    ttft = [t for r in runs for t in r.ttft_ms()]
    tokens = sum(x.tokens for r in runs for x in r.requests)
    wall = sum(r.wall for r in runs)
    return {
        "tokens_per_s": ratio(tokens, wall),
        "ttft_p50_ms": percentile(ttft, 50),
        "ttft_p95_ms": percentile(ttft, 95),
        "requests": float(len(ttft)),
        "tokens": float(tokens),
        "wall_s": wall,
    }


async def _measure(ctx: BenchContext, app: AppProcess, llm: Any) -> dict[str, Any]:
    import httpx

    max_tokens = ctx.scale(64, 16)
    messages = [bench_tenant().prompt.render(question=q, sources=[], history=[]) for q in QUESTIONS]
    prompts = [raw_prompt(llm, m) for m in messages]

    def raw(i: int) -> Any:
        return raw_request(llm, prompts[i % len(prompts)], max_tokens, ctx.seed)

    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=app.base_url, timeout=600, limits=limits) as client:

        def http(i: int) -> Any:
            return http_request(
                client, app.api_key, QUESTIONS[i % len(QUESTIONS)], max_tokens, ctx.seed
            )

        sides = {"raw": raw, "app": http}
        for call in sides.values():  # warm up both paths (connections, caches, first batch)
            await closed_loop(call, 4, 4)
        runs: dict[str, dict[int, list[LoadResult]]] = {"raw": {}, "app": {}}
        idle_cpu: dict[str, float] = {"app_while_raw": 0.0, "raw_while_app": 0.0}
        assert app.proc is not None
        for conc in (1, 4, 16):
            n = ctx.scale(max(4, 2 * conc), conc)
            for order in (("raw", "app"), ("app", "raw"))[: ctx.scale(2, 1)]:
                for side in order:
                    idle_pid = app.proc.pid if side == "raw" else os.getpid()
                    before = tree_cpu_seconds([idle_pid]) if side == "raw" else 0.0
                    result = await closed_loop(sides[side], n, conc)
                    runs[side].setdefault(conc, []).append(result)
                    if side == "raw":
                        idle_cpu["app_while_raw"] += tree_cpu_seconds([idle_pid]) - before
    return {"runs": runs, "idle_cpu": idle_cpu, "max_tokens": max_tokens}


def run(ctx: BenchContext) -> BenchResult:
    """Raw AsyncLLM vs the full HTTP chat turn at concurrency 1, 4 and 16."""
    result = BenchResult("overhead", "1. Overhead of the product over raw vLLM")
    assert ctx.model_dir is not None
    app = AppProcess(ctx.subdir("overhead"), ctx.model_dir)
    # The app first: its start embeds demo documents and starts its engine, on 2 cores.
    app_start = app.start()
    try:
        llm = ctx.raw_llm()
        measured = ctx.run(_measure(ctx, app, llm))
    finally:
        app.stop()
    raw_start = ctx.engine_start_s
    rows, data = [], {}
    for conc in (1, 4, 16):
        raw_s = _summary(measured["runs"]["raw"][conc])
        app_s = _summary(measured["runs"]["app"][conc])
        tput = ratio(app_s["tokens_per_s"], raw_s["tokens_per_s"])
        added = app_s["ttft_p50_ms"] - raw_s["ttft_p50_ms"]
        data[str(conc)] = {
            "raw": raw_s,
            "app": app_s,
            "throughput_ratio": tput,
            "ttft_p50_added_ms": added,
        }
        rows.append(
            [
                conc,
                raw_s["tokens_per_s"],
                app_s["tokens_per_s"],
                tput,
                raw_s["ttft_p50_ms"],
                app_s["ttft_p50_ms"],
                added,
                raw_s["ttft_p95_ms"],
                app_s["ttft_p95_ms"],
                int(app_s["requests"]),
            ]
        )
        result.targets.append(
            target(f"overhead: throughput app/raw at concurrency {conc}", tput, "x", ">=", 0.95)
        )
    result.targets.append(
        target(
            "overhead: TTFT p50 added at concurrency 1",
            data["1"]["ttft_p50_added_ms"],
            "ms",
            "<=",
            15,
        )
    )
    result.data = {
        "by_concurrency": data,
        "max_tokens": measured["max_tokens"],
        "app_start_s": app_start,
        "raw_engine_start_s": raw_start,
        "idle_app_cpu_s_during_raw_runs": measured["idle_cpu"]["app_while_raw"],
    }
    result.tables.append(
        Table(
            f"Output tokens/s and TTFT (ms), max_tokens={measured['max_tokens']}, greedy, "
            "requests per side per concurrency shown",
            [
                "concurrency",
                "raw tok/s",
                "app tok/s",
                "app / raw",
                "raw TTFT p50",
                "app TTFT p50",
                "TTFT p50 added",
                "raw TTFT p95",
                "app TTFT p95",
                "requests",
            ],
            rows,
        )
    )
    result.notes.append(
        f"App ready in {app_start:.0f} s, raw engine in {raw_start:.0f} s. The idle app "
        f"used {measured['idle_cpu']['app_while_raw']:.1f} CPU-s in total while the raw "
        "side ran (it does not compete). The app runs with "
        "TENANTLLM_TENANT_MAX_CONCURRENCY=64 so that the per-tenant cap (default 8) does not "
        "throttle concurrency 16, and with rate limits far above the load (still checked)."
    )
    return result


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        serve()
    else:
        sys.exit("usage: python -m bench.overhead serve")
