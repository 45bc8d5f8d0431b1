"""Benchmark: time to first token of a response-cache hit against a miss, in one run.

One product `Services` with `TENANTLLM_REDIS_URL` (the machine's Redis; so the rate limits,
the team leases and the counters are in Redis too, as with replicas) and the product engine,
two bench tenants (retrieval off): `off` keeps no answers, `on` keeps them 600 s. Each round
asks a question new to the run (so the cached team's first ask is a miss) of `off`, then of
`on` (the miss, which stores the answer), then the same of `on` again (the hit); which of
`off` and the miss goes first swaps every round. Greedy (temperature 0), 16 tokens, through
`start_chat_turn` and the whole stream, as the API runs a turn.

TTFT: from `start_chat_turn` to the first chunk. Ratios: the hit's and the miss's TTFT over
the no-cache turn's (p50 and p95), all from the same rounds. The miss's extra work is the
document-set version read and one GET before, one SET after; the hit skips the scheduler and
the engine. A hit still pays retrieval in a team that has it (off here: see the retrieval
benchmark for its cost).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

from bench.common import BenchContext, BenchResult, Table, ratio, summarize, target
from bench.engines import QUESTIONS, bench_tenant

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def _services(ctx: BenchContext, off: str, on: str) -> Any:
    from core.services import build_services
    from core.tenancy import TenantRegistry

    settings = ctx.settings(
        "response-cache",
        redis_url=REDIS_URL,
        rate_limit_user="10000000/minute",
        rate_limit_tenant="10000000/minute",
    )
    base = bench_tenant()
    tenants = TenantRegistry(
        [
            dataclasses.replace(base, id=off, display_name="Off"),
            dataclasses.replace(base, id=on, display_name="On", response_cache_seconds=600),
        ]
    )
    return build_services(settings, tenants=tenants, engine=ctx.engine())


async def _ttft(services: Any, tenant: str, question: str) -> tuple[float, bool]:
    """One turn: (seconds to its first chunk, whether it was a cache hit)."""
    from core.chat.request import ChatRequest
    from core.chat.turn import start_chat_turn

    request = ChatRequest(
        tenant_id=tenant, question=question, max_tokens=16, temperature=0.0, channel="api"
    )
    principal = _principal(services)
    started = time.perf_counter()
    turn = await start_chat_turn(services, principal, request)
    first: float | None = None
    async for _chunk in turn.stream():
        if first is None:
            first = time.perf_counter() - started
    hit = "cache_hit" in turn._audit.flags  # the flags its audit row gets
    return (first if first is not None else float("nan")), hit


def _principal(services: Any) -> Any:
    from core.identity import Principal

    return Principal(
        subject="bench-user", email=None, kind="user",
        tenant_roles={t.id: "member" for t in services.tenants.all()},
    )  # fmt: skip


async def _rounds(services: Any, off: str, on: str, rounds: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {"off": [], "miss": [], "hit": []}
    wrong: list[str] = []
    for warm in range(3):  # connections, scripts, the engine's first requests
        await _ttft(services, off, f"warm-up {warm}")
    for i in range(rounds):
        question = f"{QUESTIONS[i % len(QUESTIONS)]} (round {i})"
        order = ("off", "miss") if i % 2 == 0 else ("miss", "off")
        for side in order:
            seconds, hit = await _ttft(services, off if side == "off" else on, question)
            samples[side].append(seconds)
            if hit:
                wrong.append(f"{side} {i}")
        seconds, hit = await _ttft(services, on, question)
        samples["hit"].append(seconds)
        if not hit:
            wrong.append(f"hit {i}")
    if wrong:
        raise RuntimeError(f"turns not as expected (hit/miss): {wrong[:5]}")
    return samples


async def _clear(services: Any, tenants: tuple[str, ...]) -> None:
    from core.chat.response_cache import KEY_PREFIX

    redis = services.redis
    for tenant in tenants:
        keys = [k async for k in redis.scan_iter(match=f"{KEY_PREFIX}:{tenant}:*")]
        if keys:
            await redis.delete(*keys)
    await services.scheduler.close()
    await redis.aclose()


def _ms(values: list[float]) -> dict[str, float]:
    stats = summarize([v * 1000.0 for v in values])
    return {"n": stats["n"], "p50": stats["p50"], "p95": stats["p95"]}


def run(ctx: BenchContext) -> BenchResult:
    """TTFT of a hit and of a miss against a turn without the cache, side by side."""
    result = BenchResult("response_cache", "Response cache: TTFT of a hit against a miss")
    rounds = ctx.scale(100, 5)
    off, on = f"rc{os.getpid()}-off", f"rc{os.getpid()}-on"
    services = _services(ctx, off, on)
    ctx.run(services.auditor.start())
    try:
        samples = ctx.run(_rounds(services, off, on, rounds))
    finally:
        ctx.run(services.auditor.stop())
        ctx.run(_clear(services, (off, on)))
    stats = {side: _ms(values) for side, values in samples.items()}
    ratios = {
        f"{side}_{q}": ratio(stats[side][q], stats["off"][q])
        for side in ("hit", "miss")
        for q in ("p50", "p95")
    }
    result.data = {"rounds": rounds, "ttft_ms": stats, "ratios": ratios}
    rows = [["no cache", stats["off"]["p50"], stats["off"]["p95"], 1.0, 1.0]] + [
        [side, stats[side]["p50"], stats[side]["p95"], ratios[f"{side}_p50"], ratios[f"{side}_p95"]]
        for side in ("miss", "hit")
    ]
    headers = ["side", "TTFT p50 ms", "TTFT p95 ms", "p50 / no cache", "p95 / no cache"]
    caption = f"{rounds} rounds: a turn without the cache, a miss, then the same request's hit"
    result.tables.append(Table(caption, headers, rows))
    result.targets += [
        target("response cache hit TTFT p50 / no-cache turn", ratios["hit_p50"], "x", "<=", 0.5),
        target("response cache miss TTFT p50 / no-cache turn", ratios["miss_p50"], "x", "<=", 1.1),
    ]
    result.notes.append(
        "Bench tenants with retrieval off; greedy, 16 tokens; the product engine; Redis at "
        f"{REDIS_URL} for the cache, the rate limits and the fair share (as with replicas)."
    )
    return result
