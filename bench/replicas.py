"""Benchmark: two app replicas on one remote vLLM server against one replica (issue 19).

The scale-out topology of docs/scale-out.md, minus what the load does not touch: one vLLM
OpenAI-compatible server (`bench.engines.VllmServer`), one PostgreSQL database and Redis
shared by the replicas, each replica a `tenantllm serve` (`bench.engines.AppProcess`, the
bench tenant with retrieval off, the remote engine backend) with a data dir of its own.

Three phases, so a drift of the shared machine hits both sides alike: replica A alone, then
A and B with the requests alternating between them, then A alone again (B stopped). Each
phase runs the same closed-loop load at concurrency 1, 4 and 16 (greedy, fixed seed, 48
tokens). The second replica must cost no throughput: the target is 2 replicas / 1 replica
>= 0.95 in aggregate tokens/s at every concurrency (the one-replica side pooled over its two
phases).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from typing import Any

from bench.common import (
    BenchContext,
    BenchResult,
    LoadResult,
    RequestStats,
    Table,
    closed_loop,
    percentile,
    pg_database,
    ratio,
    target,
)
from bench.engines import QUESTIONS, AppProcess, VllmServer, http_request

CONCURRENCY = (1, 4, 16)
MAX_TOKENS = 48
REDIS_URL = "redis://127.0.0.1:6379/0"


async def _phase(ctx: BenchContext, replicas: list[AppProcess]) -> dict[int, LoadResult]:
    """The closed-loop load at each concurrency, request i on replica i mod len(replicas)."""
    import httpx

    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=app.base_url, timeout=600, limits=limits)
            )
            for app in replicas
        ]

        def call(i: int) -> Awaitable[RequestStats]:
            app, client = replicas[i % len(replicas)], clients[i % len(replicas)]
            question = QUESTIONS[i % len(QUESTIONS)]
            return http_request(client, app.api_key, question, MAX_TOKENS, ctx.seed)

        await closed_loop(call, 2 * len(replicas), 2)  # warm up each replica's connections
        return {c: await closed_loop(call, ctx.scale(max(8, 2 * c), c), c) for c in CONCURRENCY}


def _tokens_per_s(runs: list[LoadResult]) -> float:
    return ratio(sum(x.tokens for r in runs for x in r.requests), sum(r.wall for r in runs))


def _ttft(runs: list[LoadResult], q: float) -> float:
    return percentile([t for r in runs for t in r.ttft_ms()], q)


def _report(
    result: BenchResult, one: list[dict[int, LoadResult]], two: dict[int, LoadResult]
) -> dict[str, Any]:
    """The table and targets of `result`; the measured numbers by concurrency."""
    rows: list[list[Any]] = []
    data: dict[str, Any] = {}
    for c in CONCURRENCY:
        sides = {"1 replica": [p[c] for p in one], "2 replicas": [two[c]]}
        measured = {
            name: {
                "tokens_per_s": _tokens_per_s(runs),
                "ttft_p50_ms": _ttft(runs, 50),
                "ttft_p95_ms": _ttft(runs, 95),
                "requests": sum(len(r.requests) for r in runs),
            }
            for name, runs in sides.items()
        }
        x = ratio(measured["2 replicas"]["tokens_per_s"], measured["1 replica"]["tokens_per_s"])
        data[str(c)] = {**measured, "two_vs_one_tokens_ratio": x}
        for name, m in measured.items():
            rows.append([c, name, m["tokens_per_s"], m["ttft_p50_ms"], m["ttft_p95_ms"],
                         m["requests"]])  # fmt: skip
        result.targets.append(
            target(f"replicas: 2 / 1 replica tokens/s at concurrency {c}", x, "x", ">=", 0.95)
        )
    result.tables.append(
        Table(
            f"One vLLM server, PostgreSQL + Redis shared; greedy, {MAX_TOKENS} tokens; the "
            "1-replica side pooled over its two phases (before and after the 2-replica one)",
            ["concurrency", "side", "aggregate tok/s", "TTFT p50 ms", "TTFT p95 ms", "requests"],
            rows,
        )
    )
    return data


def run(ctx: BenchContext) -> BenchResult:
    """Tokens/s and TTFT p50/p95 at concurrency 1/4/16: one replica, then two, then one."""
    result = BenchResult("replicas", "Scale-out: two app replicas on one vLLM server vs one")
    assert ctx.model_dir is not None
    server = VllmServer(ctx.subdir("replicas-vllm"), ctx.model_dir)
    with pg_database("tlm_bench_replicas") as db_url:
        shared = {
            "TENANTLLM_ENGINE_BACKEND": "openai",
            "TENANTLLM_DATABASE_URL": db_url,
            "TENANTLLM_REDIS_URL": REDIS_URL,
        }
        a = AppProcess(ctx.subdir("replicas-a"), ctx.model_dir, shared)
        b = AppProcess(ctx.subdir("replicas-b"), ctx.model_dir, shared)
        try:
            server_start = server.start()
            for app in (a, b):
                app.env["TENANTLLM_ENGINE_URL"] = server.base_url
            start_s = {"a": a.start()}
            first = ctx.run(_phase(ctx, [a]))
            start_s["b"] = b.start()
            both = ctx.run(_phase(ctx, [a, b]))
            b.stop()
            again = ctx.run(_phase(ctx, [a]))
        finally:
            b.stop()
            a.stop()
            server.stop()
    result.data = {
        "max_tokens": MAX_TOKENS,
        "by_concurrency": _report(result, [first, again], both),
        "start_s": {"vllm": server_start, **start_s},
    }
    result.notes.append(
        f"vLLM server started in {server_start:.0f} s, replica A in {start_s['a']:.0f} s, "
        f"replica B in {start_s['b']:.0f} s. Both replicas share one PostgreSQL database "
        "(API keys, audit, usage) and Redis (rate limits, team caps, fair-share counters)."
    )
    return result
