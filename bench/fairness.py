"""Benchmark 3: a quiet tenant's time to first token while a noisy neighbour floods.

Tenant `flood` runs 32 concurrent streams back to back; tenant `quiet` sends one request per
second (open loop: a request starts every second whatever the others do). Both go through
the product's chat turn (`core.chat.turn.start_chat_turn` then `ChatTurn.stream()`: authorization,
rate limits, the retrieval call, template, prompt hooks, the per-tenant generation slot,
the shared engine, the audit event), in this process, on the run's shared engine. The HTTP
layer is left out: the mechanisms under test live below it. Retrieval is off (the tenants'
retriever finds nothing) so only generation competes.

Variants, each measured the same way:
* `alone`: the quiet tenant only (the baseline, measured before and after the floods);
* `fairness off`: no effective cap (64 generations per tenant), equal priority;
* `cap`: the product's default per-tenant cap (`tenant_max_concurrency`, 8), equal priority;
* `cap + priority`: the cap, and the quiet tenant configured with a better priority (-1).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from bench.common import BenchContext, BenchResult, Table, percentile, ratio, target
from bench.engines import QUESTIONS, bench_tenant

FLOOD_STREAMS = 32
FLOOD, QUIET = "flood", "quiet"


def _services(ctx: BenchContext, cap: int, quiet_priority: int) -> Any:
    from core.services import build_services
    from core.tenancy import TenantRegistry

    settings = ctx.settings(
        "fairness",
        tenant_max_concurrency=cap,
        rate_limit_user="1000000/minute",
        rate_limit_tenant="1000000/minute",
    )
    base = bench_tenant()
    tenants = TenantRegistry(
        [
            dataclasses.replace(base, id=FLOOD, display_name="Flood"),
            dataclasses.replace(base, id=QUIET, display_name="Quiet", priority=quiet_priority),
        ]
    )
    return build_services(settings, tenants=tenants, engine=ctx.engine())


def _principal() -> Any:
    from core.identity import Principal

    return Principal(
        subject="bench-user",
        email=None,
        kind="user",
        tenant_roles={FLOOD: "member", QUIET: "member"},
    )


async def _turn(services: Any, tenant: str, i: int, max_tokens: int, seed: int) -> float:
    """One chat turn; returns its time to first token in ms (NaN if nothing came)."""
    from core.chat.request import ChatRequest
    from core.chat.turn import start_chat_turn

    request = ChatRequest(
        tenant_id=tenant,
        question=QUESTIONS[i % len(QUESTIONS)],
        max_tokens=max_tokens,
        temperature=0.0,
        seed=seed,
        channel="api",
    )
    started = time.perf_counter()
    turn = await start_chat_turn(services, _principal(), request)
    ttft = float("nan")
    async for chunk in turn.stream():
        if chunk.delta and ttft != ttft:
            ttft = (time.perf_counter() - started) * 1000.0
    return ttft


async def _flood(services: Any, stop: asyncio.Event, stats: dict[str, int], seed: int) -> None:
    from core.errors import RateLimited

    async def stream(worker: int) -> None:
        i = worker
        while not stop.is_set():
            try:
                await _turn(services, FLOOD, i, 128, seed)
                stats["done"] += 1
            except RateLimited:  # the cap's wait ran out: back off, as a client would
                stats["refused"] += 1
                await asyncio.sleep(0.5)
            i += FLOOD_STREAMS

    workers = [asyncio.create_task(stream(w)) for w in range(FLOOD_STREAMS)]
    await stop.wait()
    for w in workers:
        w.cancel()  # the chat turn aborts the engine request and audits `cancelled`
    await asyncio.gather(*workers, return_exceptions=True)


async def _quiet(services: Any, seconds: int, seed: int) -> list[float]:
    """One quiet request per second for `seconds` seconds; their TTFTs."""
    tasks = []
    for i in range(seconds):
        tasks.append(asyncio.create_task(_turn(services, QUIET, i, 32, seed)))
        await asyncio.sleep(1.0)
    return list(await asyncio.gather(*tasks))


async def _variant(services: Any, seconds: int, seed: int, flood: bool) -> dict[str, Any]:
    for tenant in (QUIET, FLOOD):  # warm up: open each tenant's store, first turn's paths
        await _turn(services, tenant, 0, 4, seed)
    stop = asyncio.Event()
    stats = {"done": 0, "refused": 0}
    flooding = asyncio.create_task(_flood(services, stop, stats, seed)) if flood else None
    if flooding is not None:
        await asyncio.sleep(3.0)  # let the flood fill the engine first
    ttft = await _quiet(services, seconds, seed)
    stop.set()
    if flooding is not None:
        await flooding
    return {
        "ttft_ms": ttft,
        "p50_ms": percentile(ttft, 50),
        "p95_ms": percentile(ttft, 95),
        "flood_done": stats["done"],
        "flood_refused": stats["refused"],
    }


def run(ctx: BenchContext) -> BenchResult:
    """The quiet tenant's TTFT p95 alone and under a 32-stream flood, fairness off and on."""
    result = BenchResult("fairness", "3. Fairness under a noisy neighbour")
    seconds = ctx.scale(15, 5)
    variants = {
        "alone": (64, 0, False),
        "fairness off (no cap, equal priority)": (64, 0, True),
        "cap 8 (product default)": (8, 0, True),
        "cap 8 + quiet priority -1": (8, -1, True),
        "alone (again)": (64, 0, False),
    }
    measured: dict[str, dict[str, Any]] = {}
    for name, (cap, priority, flood) in variants.items():
        services = _services(ctx, cap, priority)
        try:
            measured[name] = ctx.run(_variant(services, seconds, ctx.seed, flood))
        finally:
            services.auditor.close()
    alone = [t for k in ("alone", "alone (again)") for t in measured[k]["ttft_ms"]]
    alone_p95 = percentile(alone, 95)
    rows = []
    for name, m in measured.items():
        rows.append(
            [
                name,
                m["p50_ms"],
                m["p95_ms"],
                ratio(m["p95_ms"], alone_p95),
                m["flood_done"],
                m["flood_refused"],
                len(m["ttft_ms"]),
            ]
        )
    result.data = {
        "variants": measured,
        "alone_p95_ms": alone_p95,
        "seconds": seconds,
        "flood_streams": FLOOD_STREAMS,
    }
    result.tables.append(
        Table(
            f"Quiet tenant TTFT (ms), 1 request/s for {seconds} s; flood = {FLOOD_STREAMS} streams "
            "x 128 tokens; ratio against both `alone` runs pooled",
            [
                "variant",
                "quiet p50",
                "quiet p95",
                "p95 / alone p95",
                "flood turns done",
                "flood turns refused (cap wait > 10 s)",
                "quiet requests",
            ],
            rows,
        )
    )
    on = measured["cap 8 + quiet priority -1"]
    result.targets.append(
        target(
            "fairness on: quiet p95 under flood / alone",
            ratio(on["p95_ms"], alone_p95),
            "x",
            "<=",
            2.0,
        )
    )
    return result
