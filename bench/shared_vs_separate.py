"""Benchmark 2: one shared engine for three tenants vs one engine per tenant.

The same load, 3 tenants x N concurrent users (closed loop, each user sends requests back to
back), runs first on one engine with the configured KV cache, then split over three engines,
each with a third of that KV budget, all three in this process at once (each `AsyncLLM` has
its own engine core process). Engines are built by the product's own builder, so every
engine argument is the product's. Memory is the resident set (and the proportional set,
which does not count shared library pages several times) of the engine core process trees,
sampled during the load; the peak is reported.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.common import (
    BenchContext,
    BenchResult,
    LoadResult,
    Table,
    child_pids,
    closed_loop,
    new_children,
    percentile,
    ratio,
    sample_peak_memory,
    target,
)
from bench.engines import QUESTIONS, build_raw_engine, kv_budget, raw_prompt, raw_request
from bench.engines import shutdown_engine as _shutdown

TENANT_SYSTEMS = {
    "sales": "You are the assistant of the Sales team. Be friendly, brief and concrete.",
    "finance": "You are the assistant of the Finance team. Be precise about numbers.",
    "development": "You are the assistant of the Development team. Answer like an engineer.",
}


def _prompts(llm: Any, tenant: str) -> list[tuple[list[int], str]]:
    system = TENANT_SYSTEMS[tenant]
    return [
        raw_prompt(llm, [{"role": "system", "content": system}, {"role": "user", "content": q}])
        for q in QUESTIONS
    ]


async def _load(
    engines: dict[str, Any], users: int, per_user: int, max_tokens: int, seed: int
) -> LoadResult:
    """Every tenant's users at once, each on the engine serving that tenant."""
    prompts = {t: _prompts(llm, t) for t, llm in engines.items()}

    async def tenant_load(tenant: str) -> LoadResult:
        def call(i: int) -> Any:
            p = prompts[tenant][i % len(prompts[tenant])]
            return raw_request(engines[tenant], p, max_tokens, seed)

        return await closed_loop(call, users * per_user, users)

    started = time.perf_counter()
    parts = await asyncio.gather(*(tenant_load(t) for t in TENANT_SYSTEMS))
    return LoadResult([r for p in parts for r in p.requests], time.perf_counter() - started)


async def _measure(
    engines: dict[str, Any], pids: list[int], ctx: BenchContext, users: int
) -> dict[str, Any]:
    max_tokens = ctx.scale(48, 16)
    await _load(engines, 1, 1, 8, ctx.seed)  # warm up every engine
    async with sample_peak_memory(pids) as peak:
        load = await _load(engines, users, ctx.scale(3, 1), max_tokens, ctx.seed)
    ttft = load.ttft_ms()
    return {
        "tokens_per_s": load.tokens_per_s,
        "ttft_p50_ms": percentile(ttft, 50),
        "ttft_p95_ms": percentile(ttft, 95),
        "requests": len(ttft),
        "peak_rss_mib": peak.get("rss_mib", float("nan")),
        "peak_pss_mib": peak.get("pss_mib", float("nan")),
        "engine_processes": len(pids),
    }


def _start(settings: Any) -> tuple[Any, list[int], float]:
    before = child_pids()
    started = time.monotonic()
    llm = build_raw_engine(settings)
    return llm, new_children(before), time.monotonic() - started


def _shared(ctx: BenchContext, users: int) -> dict[str, Any]:
    # The run's product engine: the AsyncLLM inside it, driven directly like the others.
    llm = ctx.raw_llm()
    engines = dict.fromkeys(TENANT_SYSTEMS, llm)
    measured = ctx.run(_measure(engines, ctx.engine_pids, ctx, users))
    return {**measured, "start_s": ctx.engine_start_s}


def _separate(ctx: BenchContext, users: int) -> dict[str, Any]:
    settings = ctx.settings("separate")
    engines: dict[str, Any] = {}
    pids: list[int] = []
    seconds = 0.0
    try:
        with kv_budget(3):
            for tenant in TENANT_SYSTEMS:
                engines[tenant], new, took = _start(settings)
                pids += new
                seconds += took
        measured = ctx.run(_measure(engines, pids, ctx, users))
    finally:
        for llm in engines.values():
            _shutdown(llm)
    return {**measured, "start_s": seconds}


def run(ctx: BenchContext) -> BenchResult:
    """Aggregate tokens/s, TTFT p95 and engine memory: shared vs separate engines."""
    result = BenchResult("shared", "2. Shared engine vs one engine per tenant")
    assert ctx.model_dir is not None
    users = ctx.scale(4, 2)
    settings = ctx.settings("shared")
    shared = _shared(ctx, users)
    separate = _separate(ctx, users)
    speed = ratio(shared["tokens_per_s"], separate["tokens_per_s"])
    memory = ratio(shared["peak_rss_mib"], separate["peak_rss_mib"])
    result.data = {
        "users_per_tenant": users,
        "kv_cache_gib_total": settings.kv_cache_gib,
        "shared": shared,
        "separate": separate,
        "throughput_ratio": speed,
        "rss_ratio": memory,
        "pss_ratio": ratio(shared["peak_pss_mib"], separate["peak_pss_mib"]),
    }
    rows = []
    for label, m in (("1 shared engine", shared), ("3 engines, 1/3 KV each", separate)):
        rows.append(
            [
                label,
                m["tokens_per_s"],
                m["ttft_p50_ms"],
                m["ttft_p95_ms"],
                m["peak_rss_mib"],
                m["peak_pss_mib"],
                m["engine_processes"],
                m["start_s"],
                m["requests"],
            ]
        )
    result.tables.append(
        Table(
            f"3 tenants x {users} concurrent users, KV cache {settings.kv_cache_gib} GiB in total",
            [
                "setup",
                "aggregate tok/s",
                "TTFT p50 ms",
                "TTFT p95 ms",
                "engine RSS MiB (peak)",
                "engine PSS MiB (peak)",
                "engine processes",
                "start s",
                "requests",
            ],
            rows,
        )
    )
    result.targets += [
        target("shared vs separate: aggregate tokens/s ratio", speed, "x", ">", 1.0),
        target("shared vs separate: engine RSS ratio", memory, "x", "<", 0.5),
    ]
    return result
