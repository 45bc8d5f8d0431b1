"""Benchmark 6: aggregate tokens/s and TTFT p95 as concurrency grows from 1 to 64.

Closed-loop load on the product's engine (`Engine.stream_chat`, the call the chat turn
makes), fixed prompts and `max_tokens`, greedy. The baseline is concurrency 1 in the same
run: the table gives each level's speed-up over it. One PNG plot.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import (
    BenchContext,
    BenchResult,
    RequestStats,
    Table,
    closed_loop,
    percentile,
    ratio,
)
from bench.engines import QUESTIONS, bench_tenant

RESERVE_S = 240.0  # what the retrieval benchmark and the report need after this one


async def _request(
    engine: Any, messages: list[dict[str, str]], max_tokens: int, seed: int
) -> RequestStats:
    from core.engine.base import GenerationParams

    params = GenerationParams(max_tokens=max_tokens, temperature=0.0, seed=seed)
    started = time.perf_counter()
    ttft, tokens = float("nan"), 0
    async for chunk in engine.stream_chat(messages, params, engine.default_options("bench")):
        tokens = chunk.completion_tokens
        if tokens and ttft != ttft:
            ttft = time.perf_counter() - started
    return RequestStats(ttft, tokens, time.perf_counter() - started, started)


def _plot(path: Any, levels: list[int], tps: list[float], p95: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, left = plt.subplots(figsize=(7, 4))
    left.plot(levels, tps, "o-", color="tab:blue", label="aggregate output tokens/s")
    left.set_xscale("log", base=2)
    left.set_xticks(levels, [str(c) for c in levels])
    left.set_xlabel("concurrent streams")
    left.set_ylabel("output tokens/s", color="tab:blue")
    right = left.twinx()
    right.plot(levels, p95, "s--", color="tab:red", label="TTFT p95")
    right.set_ylabel("TTFT p95 (ms)", color="tab:red")
    left.set_title("Shared engine: throughput and time to first token vs concurrency")
    left.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(ctx: BenchContext) -> BenchResult:
    """Tokens/s and TTFT p95 at concurrency 1, 2, 4, ... 64, and the plot."""
    result = BenchResult("scaling", "6. Scaling curve")
    engine = ctx.engine()
    levels = [1, 2, 4, 8, 16, 32, 64] if not ctx.quick else [1, 4, 16]
    max_tokens = ctx.scale(48, 16)
    prompt = bench_tenant().prompt
    messages = [prompt.render(question=q, sources=[], history=[]) for q in QUESTIONS]

    def call(i: int) -> Any:
        return _request(engine, messages[i % len(messages)], max_tokens, ctx.seed)

    ctx.run(closed_loop(call, 4, 4))  # warm up
    rows: list[list[Any]] = []
    data: dict[int, dict[str, float]] = {}
    for conc in levels:
        if data and ctx.remaining() < RESERVE_S:  # keep the budget for what comes after
            result.notes.append(f"Stopped before concurrency {conc}: time budget.")
            break
        # Two waves of requests per level, one at 64 (its wave alone is ~30 s on 2 cores).
        load = ctx.run(closed_loop(call, ctx.scale(max(4, min(2 * conc, 64)), conc), conc))
        ttft = load.ttft_ms()
        data[conc] = {
            "tokens_per_s": load.tokens_per_s,
            "ttft_p50_ms": percentile(ttft, 50),
            "ttft_p95_ms": percentile(ttft, 95),
            "requests": len(ttft),
        }
    levels = list(data)
    base = data[levels[0]]["tokens_per_s"]
    for conc in levels:
        d = data[conc]
        d["speedup_vs_1"] = ratio(d["tokens_per_s"], base)
        rows.append(
            [
                conc,
                d["tokens_per_s"],
                d["speedup_vs_1"],
                d["ttft_p50_ms"],
                d["ttft_p95_ms"],
                d["requests"],
            ]
        )
    plot = ctx.out_dir / "scaling.png"
    _plot(
        plot,
        levels,
        [data[c]["tokens_per_s"] for c in levels],
        [data[c]["ttft_p95_ms"] for c in levels],
    )
    result.plots.append(plot.name)
    result.data = {"by_concurrency": {str(k): v for k, v in data.items()}, "max_tokens": max_tokens}
    result.tables.append(
        Table(
            f"Product engine, closed loop, max_tokens={max_tokens}, greedy",
            ["concurrency", "tokens/s", "speed-up vs 1", "TTFT p50 ms", "TTFT p95 ms", "requests"],
            rows,
        )
    )
    return result
