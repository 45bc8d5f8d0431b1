"""Benchmark: team adapters on the one shared engine (issue 16), the S-LoRA comparison.

Four LoRA adapters (rank 8, the product's default) are trained by the product's own trainer
(`core.adapters.training.train_lora`, a few steps each: the cost of serving an adapter does
not depend on what it learned). The same closed-loop load, at concurrency 4 and 16, then runs
on these setups, one after the other:

- the run's product engine, LoRA off, base requests only (the baseline);
- one engine with LoRA on (`TENANTLLM_ENABLE_LORA`), base requests only: what turning LoRA on
  costs the teams without an adapter;
- the same engine, requests spread evenly over the base model and 2, then 4, adapters;
- an engine with `TENANTLLM_MAX_LORA_RANK=64` on base + 2 adapters: vLLM pads every adapter
  to the engine's highest rank, and its CPU kernels gather the padded weights per token;
- one engine per adapter plus one for the base model (3 engines for 2 adapters), each with a
  third of the KV cache, all at once: what a team would run without multi-LoRA.

Memory is the peak resident (and proportional) set of the engine core process trees during
the load. Engines are built by the product's builder, so every engine argument is the
product's; requests go straight to the `AsyncLLM`s (no HTTP, no chat turn).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
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

ADAPTERS = 4
SYSTEM = "You are the assistant of the {team} team. Answer briefly and concretely."
#: One request class: which engine serves it and with which adapter (None: the base model).
Route = tuple[Any, Any]


def _train_adapters(ctx: BenchContext) -> list[Path]:
    """ADAPTERS small adapters of the bundled model, trained by the product's trainer."""
    from core.adapters.training import Example, TrainingOptions, train_lora

    folders = []
    options = TrainingOptions(steps=ctx.scale(4, 1), batch_size=2, threads=1)
    for n in range(1, ADAPTERS + 1):
        pairs = [
            Example([{"role": "user", "content": f"What is team {n}'s code word?"}], f"Word {n}.")
        ]
        folder = ctx.subdir("adapters") / f"team{n}-v1"
        train_lora(str(ctx.model_dir), pairs, folder, options)
        folders.append(folder)
    return folders


def _lora_request(n: int, folder: Path) -> Any:
    from vllm.lora.request import LoRARequest

    return LoRARequest(folder.name, n, str(folder))


async def _load(
    routes: list[Route], concurrency: int, requests: int, max_tokens: int, seed: int
) -> LoadResult:
    """Closed-loop load spread round-robin over `routes`; the first request of each warms up."""
    prompts = [
        raw_prompt(
            llm,
            [
                {"role": "system", "content": SYSTEM.format(team=f"T{i}")},
                {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]},
            ],
        )
        for i, (llm, _) in enumerate(routes)
    ]

    def call(i: int) -> Any:
        llm, lora = routes[i % len(routes)]
        return raw_request(llm, prompts[i % len(routes)], max_tokens, seed, lora=lora)

    return await closed_loop(call, requests, concurrency)


async def _measure(
    routes: list[Route], pids: list[int], ctx: BenchContext, concurrency: int
) -> dict[str, Any]:
    max_tokens = ctx.scale(32, 8)
    await asyncio.gather(  # warm up: each adapter loaded, each engine's first step done
        *(raw_request(llm, raw_prompt(llm, [{"role": "user", "content": "Hi"}]), 2, ctx.seed,
                      lora=lora) for llm, lora in routes)
    )  # fmt: skip
    async with sample_peak_memory(pids) as peak:
        load: LoadResult = await _load(
            routes, concurrency, ctx.scale(3, 1) * concurrency, max_tokens, ctx.seed
        )
    ttft = load.ttft_ms()
    return {
        "tokens_per_s": load.tokens_per_s,
        "ttft_p50_ms": percentile(ttft, 50),
        "ttft_p95_ms": percentile(ttft, 95),
        "requests": len(ttft),
        "peak_rss_mib": peak.get("rss_mib", float("nan")),
        "peak_pss_mib": peak.get("pss_mib", float("nan")),
        "engines": len({id(llm) for llm, _ in routes}),
    }


def _start(settings: Any) -> tuple[Any, list[int]]:
    before = child_pids()
    llm = build_raw_engine(settings)
    return llm, new_children(before)


def _per_adapter_engines(
    ctx: BenchContext, folders: list[Path], measure: Callable[[list[Route], list[int]], Any]
) -> Any:
    """One base engine and one LoRA engine per adapter, a 1/n share of the KV cache each."""
    engines: list[Any] = []
    pids: list[int] = []
    try:
        with kv_budget(len(folders) + 1):
            base, new = _start(ctx.settings("adapters-separate-base"))
            engines.append(base)
            pids += new
            routes: list[Route] = [(base, None)]
            for n, folder in enumerate(folders, start=1):
                llm, new = _start(ctx.settings(f"adapters-separate-{n}", enable_lora=True))
                engines.append(llm)
                pids += new
                routes.append((llm, _lora_request(n, folder)))
        return measure(routes, pids)
    finally:
        for llm in engines:
            _shutdown(llm)


def run(ctx: BenchContext) -> BenchResult:
    """Tokens/s, TTFT p50/p95 and engine memory: base, shared multi-LoRA, one engine each."""
    result = BenchResult("adapters", "Team adapters on the shared engine (multi-LoRA)")
    assert ctx.model_dir is not None
    started = time.monotonic()
    folders = _train_adapters(ctx)
    train_s = time.monotonic() - started
    loras = [_lora_request(n, f) for n, f in enumerate(folders, start=1)]
    levels = (4, 16) if not ctx.quick else (2,)
    setups: dict[str, dict[int, dict[str, Any]]] = {}

    def each_level(routes: list[Route], pids: list[int]) -> dict[int, dict[str, Any]]:
        return {c: ctx.run(_measure(routes, pids, ctx, c)) for c in levels}

    base_llm = ctx.raw_llm()
    setups["base engine (LoRA off), base only"] = each_level([(base_llm, None)], ctx.engine_pids)
    ctx.stop_engine()  # its memory and cores belong to the next setups
    lora_llm, lora_pids = _start(ctx.settings("adapters-shared", enable_lora=True))
    try:
        setups["LoRA engine, base only"] = each_level([(lora_llm, None)], lora_pids)
        for k in (2, 4):
            routes = [(lora_llm, None), *((lora_llm, lora) for lora in loras[:k])]
            setups[f"LoRA engine, base + {k} adapters"] = each_level(routes, lora_pids)
    finally:
        _shutdown(lora_llm)
    rank64, rank64_pids = _start(
        ctx.settings("adapters-rank64", enable_lora=True, max_lora_rank=64)
    )
    try:
        routes = [(rank64, None), *((rank64, lora) for lora in loras[:2])]
        setups["LoRA engine (max rank 64), base + 2 adapters"] = each_level(routes, rank64_pids)
    finally:
        _shutdown(rank64)
    setups["one engine per adapter, base + 2 adapters"] = _per_adapter_engines(
        ctx, folders[:2], each_level
    )

    top = levels[-1]
    shared2 = setups["LoRA engine, base + 2 adapters"][top]
    separate2 = setups["one engine per adapter, base + 2 adapters"][top]
    base = setups["base engine (LoRA off), base only"][top]
    lora_base = setups["LoRA engine, base only"][top]
    four = setups["LoRA engine, base + 4 adapters"][top]
    speed = ratio(shared2["tokens_per_s"], separate2["tokens_per_s"])
    memory = ratio(shared2["peak_rss_mib"], separate2["peak_rss_mib"])
    lora_cost = ratio(lora_base["tokens_per_s"], base["tokens_per_s"])
    four_vs_base = ratio(four["tokens_per_s"], lora_base["tokens_per_s"])
    rank8_vs_64 = ratio(
        shared2["tokens_per_s"],
        setups["LoRA engine (max rank 64), base + 2 adapters"][top]["tokens_per_s"],
    )
    result.data = {
        "adapters_trained_s": train_s,
        "concurrency": list(levels),
        "setups": {name: {str(c): m for c, m in by.items()} for name, by in setups.items()},
        "shared_vs_per_adapter_tokens_ratio": speed,
        "shared_vs_per_adapter_rss_ratio": memory,
        "lora_on_vs_off_tokens_ratio": lora_cost,
        "four_adapters_vs_base_tokens_ratio": four_vs_base,
        "max_rank_8_vs_64_tokens_ratio": rank8_vs_64,
    }
    result.tables.append(
        Table(
            f"Closed loop, {ctx.scale(32, 8)} output tokens per request, requests spread evenly "
            "over the base model and the adapters",
            [
                "setup",
                "concurrency",
                "aggregate tok/s",
                "TTFT p50 ms",
                "TTFT p95 ms",
                "engine RSS MiB (peak)",
                "engine PSS MiB (peak)",
                "engines",
                "requests",
            ],
            [
                [
                    name,
                    c,
                    m["tokens_per_s"],
                    m["ttft_p50_ms"],
                    m["ttft_p95_ms"],
                    m["peak_rss_mib"],
                    m["peak_pss_mib"],
                    m["engines"],
                    m["requests"],
                ]
                for name, by in setups.items()
                for c, m in by.items()
            ],
        )
    )
    result.targets += [
        target(f"base + 2 adapters, one engine vs one each: tok/s at {top}", speed, "x", ">", 1.0),
        target("base + 2 adapters, one engine vs one each: RSS", memory, "x", "<", 0.67),
        target(f"LoRA on vs off, base only: tok/s at {top}", lora_cost, "x", ">", 0.8),
        target(f"base + 4 adapters vs base only (LoRA on): tok/s at {top}", four_vs_base,
               "x", ">", 0.8),
        target(f"base + 2 adapters, max rank 8 vs 64: tok/s at {top}", rank8_vs_64,
               "x", ">", 1.0),
    ]  # fmt: skip
    return result
