"""Benchmark 3: fair share of the one engine (issue 14), through the product's chat turn.

Every request is a full chat turn (`start_chat_turn` then `ChatTurn.stream()`: authorization,
rate limits, the retrieval call, template, prompt hooks, the fair-share scheduler, the shared
engine, the audit event) in this process, on the run's shared engine. Retrieval is off (the
bench tenants' retriever finds nothing) so only generation competes. The baseline of each
comparison runs in the same run: the scheduler switched off is `FirstComeFirstServed` below
(every turn goes straight to the engine, as before any scheduling), and `alone` is measured
before the floods.

Phases:
1. *Noisy neighbour*: tenant `quiet` sends one request per second (open loop) alone, then while
   `flood` runs 32 streams back to back, scheduler off and on. Quiet TTFT p95 against alone's
   (each p95 from >= 100 requests at full size; a bootstrap 90% interval gives the spread),
   the flood's tokens/s against what the engine gives the flood alone minus the quiet team's
   use, the flood's refusals and the longest queue wait.
2. *Shares*: two backlogged teams (16 streams each) at weights 1:1 and 2:1 for a 60 s window:
   served tokens against the weights, and the largest gap between their counters (VTC bounds
   it by twice the cost of the largest request the engine can hold at once).
3. *Cost*: one admission decision of the policy, timed one by one (10 teams, all backlogged);
   throughput at concurrency 16 of one team with the scheduler on vs off (alternated, median
   of repetitions with the spread).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from bench.common import BenchContext, BenchResult, Table, percentile, ratio, target
from bench.engines import QUESTIONS, bench_tenant

FLOOD_STREAMS = 32
FLOOD, QUIET, TEAM_A, TEAM_B = "flood", "quiet", "team_a", "team_b"
QUIET_TOKENS, FLOOD_TOKENS, SHARE_TOKENS = 32, 128, 64


class _Place:
    rank = 0
    waited = 0.0

    def generated(self, completion_tokens: int) -> None:
        """Nothing is counted: there is no policy."""


class FirstComeFirstServed:
    """The baseline: no scheduler, every turn goes to the engine at once (vLLM orders them)."""

    @asynccontextmanager
    async def place(self, tenant_id: str, prompt_tokens: int) -> AsyncIterator[_Place]:
        """A place at once, always."""
        yield _Place()


def _services(ctx: BenchContext, teams: dict[str, float], **overrides: Any) -> Any:
    from core.services import build_services
    from core.tenancy import TenantRegistry

    settings = ctx.settings(
        "fairness",
        rate_limit_user="1000000/minute",
        rate_limit_tenant="1000000/minute",
        fair_queue_wait_seconds=120.0,
        **overrides,
    )
    base = bench_tenant()
    tenants = TenantRegistry(
        [
            dataclasses.replace(base, id=t, display_name=t.title(), weight=w)
            for t, w in teams.items()
        ]
    )
    return build_services(settings, tenants=tenants, engine=ctx.engine())


def _principal(teams: Any) -> Any:
    from core.identity import Principal

    return Principal(
        subject="bench-user", email=None, kind="user", tenant_roles={t: "member" for t in teams}
    )


@dataclasses.dataclass
class Served:
    """Output tokens streamed per team (a running total) and turns refused."""

    tokens: dict[str, int] = dataclasses.field(default_factory=dict)
    refused: int = 0


async def _turn(services: Any, tenant: str, i: int, max_tokens: int, served: Served) -> float:
    """One chat turn; returns its time to first token in ms (NaN if nothing came)."""
    from core.chat.request import ChatRequest
    from core.chat.turn import start_chat_turn

    request = ChatRequest(
        tenant_id=tenant,
        question=QUESTIONS[i % len(QUESTIONS)],
        max_tokens=max_tokens,
        temperature=0.0,
        seed=1,
        channel="api",
    )
    started = time.perf_counter()
    turn = await start_chat_turn(
        services, _principal([t.id for t in services.tenants.all()]), request
    )
    ttft, seen = float("nan"), 0
    async for chunk in turn.stream():
        if chunk.delta and ttft != ttft:
            ttft = (time.perf_counter() - started) * 1000.0
        served.tokens[tenant] = served.tokens.get(tenant, 0) + chunk.completion_tokens - seen
        seen = chunk.completion_tokens
    return ttft


async def _streams(services: Any, tenant: str, n: int, max_tokens: int, served: Served) -> None:
    """`n` closed-loop streams of `tenant` until cancelled."""
    from core.errors import RateLimited

    async def stream(worker: int) -> None:
        i = worker
        while True:
            try:
                await _turn(services, tenant, i, max_tokens, served)
            except RateLimited:  # the queue wait ran out: back off, as a client would
                served.refused += 1
                await asyncio.sleep(0.5)
            i += n

    await asyncio.gather(*(stream(w) for w in range(n)))


async def _quiet(services: Any, seconds: int, served: Served) -> list[float]:
    """One quiet request per second for `seconds` seconds; their TTFTs."""
    tasks = []
    for i in range(seconds):
        tasks.append(asyncio.create_task(_turn(services, QUIET, i, QUIET_TOKENS, served)))
        await asyncio.sleep(1.0)
    return list(await asyncio.gather(*tasks))


async def _neighbour(services: Any, seconds: int, flood: bool, quiet: bool) -> dict[str, Any]:
    """The quiet team's TTFTs (if `quiet`) with or without the flood, and the flood's rate."""
    served = Served()
    for tenant in (QUIET, FLOOD):  # warm up each tenant's store and first-turn paths
        await _turn(services, tenant, 0, 4, Served())
    flooding = None
    if flood:
        flooding = asyncio.create_task(
            _streams(services, FLOOD, FLOOD_STREAMS, FLOOD_TOKENS, served)
        )
        await asyncio.sleep(10.0)  # let the flood fill the engine (32 prefills) first
    before, started = dict(served.tokens), time.perf_counter()
    ttft = await _quiet(services, seconds, served) if quiet else []
    if not quiet:
        await asyncio.sleep(seconds)
    wall = time.perf_counter() - started
    gained = {t: served.tokens.get(t, 0) - before.get(t, 0) for t in (FLOOD, QUIET)}
    if flooding is not None:
        flooding.cancel()  # the chat turn aborts the engine request and audits `cancelled`
        await asyncio.gather(flooding, return_exceptions=True)
    waits = [row.wait_p95_ms for row in _summary(services) if row.tenant_id == FLOOD]
    return {
        "ttft_ms": ttft,
        "p50_ms": percentile(ttft, 50),
        "p95_ms": percentile(ttft, 95),
        "flood_tps": gained[FLOOD] / wall,
        "quiet_tps": gained[QUIET] / wall,
        "flood_refused": served.refused,
        "flood_wait_p95_ms": waits[0] if waits else 0.0,
    }


def _summary(services: Any) -> list[Any]:
    log = getattr(services.scheduler, "log", None)
    return log.summary() if log is not None else []


def _p95_interval(
    values: list[float], baseline: list[float], draws: int = 400
) -> tuple[float, float]:
    """Bootstrap 90% interval of p95(values) / p95(baseline)."""
    rng = random.Random(7)
    ratios = sorted(
        ratio(
            percentile(rng.choices(values, k=len(values)), 95),
            percentile(rng.choices(baseline, k=len(baseline)), 95),
        )
        for _ in range(draws)
    )
    return percentile(ratios, 5), percentile(ratios, 95)


def _phase_neighbour(ctx: BenchContext, result: BenchResult) -> dict[str, Any]:
    seconds = ctx.scale(100, 8)
    teams = {FLOOD: 1.0, QUIET: 1.0}
    from core.config import Settings

    default = int(Settings.model_fields["engine_concurrency"].default)
    wider = 2 * default
    runs: dict[str, tuple[int | None, bool, bool, int]] = {
        # name: (engine_concurrency, or None: scheduler off; flood; quiet; seconds)
        "alone": (default, False, True, seconds),
        "flood alone (engine capacity for the flood)": (None, True, False, ctx.scale(20, 5)),
        "scheduler off (first come, first served)": (None, True, True, ctx.scale(30, 8)),
        f"scheduler on, engine_concurrency {default} (default)": (default, True, True, seconds),
        f"scheduler on, engine_concurrency {wider}": (wider, True, True, ctx.scale(50, 8)),
    }
    measured: dict[str, dict[str, Any]] = {}
    for name, (concurrency, flood, quiet, secs) in runs.items():
        services = _services(ctx, teams, engine_concurrency=concurrency or default)
        if concurrency is None:
            services.scheduler = FirstComeFirstServed()
        try:
            measured[name] = ctx.run(_neighbour(services, secs, flood, quiet))
        finally:
            services.auditor.close()
    alone = measured["alone"]["ttft_ms"]
    alone_p95 = percentile(alone, 95)
    capacity = measured["flood alone (engine capacity for the flood)"]["flood_tps"]
    rows = []
    for name, m in measured.items():
        low, high = _p95_interval(m["ttft_ms"], alone) if m["ttft_ms"] else (float("nan"),) * 2
        rows.append(
            [
                name,
                len(m["ttft_ms"]),
                m["p50_ms"],
                m["p95_ms"],
                ratio(m["p95_ms"], alone_p95),
                f"{low:.2f}-{high:.2f}",
                m["flood_tps"],
                m["quiet_tps"],
                m["flood_refused"],
                m["flood_wait_p95_ms"],
            ]
        )
    result.tables.append(
        Table(
            f"Noisy neighbour: quiet team 1 request/s x {QUIET_TOKENS} tokens; flood = "
            f"{FLOOD_STREAMS} streams x {FLOOD_TOKENS} tokens; TTFT in ms",
            [
                "variant",
                "quiet requests",
                "quiet p50",
                "quiet p95",
                "p95 / alone p95",
                "90% interval",
                "flood tokens/s",
                "quiet tokens/s",
                "flood refused",
                "flood queue wait p95 ms",
            ],
            rows,
        )
    )
    fair = measured[f"scheduler on, engine_concurrency {default} (default)"]
    quiet_ratio = ratio(fair["p95_ms"], alone_p95)
    flood_ratio = ratio(fair["flood_tps"], capacity - fair["quiet_tps"])
    result.targets += [
        target("fair share: quiet TTFT p95 under flood / alone", quiet_ratio, "x", "<=", 1.5),
        target(
            "fair share: flood tokens/s / (flood alone - quiet's use)", flood_ratio, "x", ">=", 0.9
        ),
        target("fair share: flood turns refused", fair["flood_refused"], "", "<=", 0),
    ]
    return measured


async def _shares(services: Any, seconds: int) -> dict[str, Any]:
    served = Served()
    tasks = [
        asyncio.create_task(_streams(services, team, 16, SHARE_TOKENS, served))
        for team in (TEAM_A, TEAM_B)
    ]
    await asyncio.sleep(15.0)  # both backlogged and streaming before the window opens
    queue = services.scheduler.queue
    before = dict(served.tokens)
    gap = 0.0
    ends = time.perf_counter() + seconds
    while time.perf_counter() < ends:
        gap = max(gap, abs(queue.counter(TEAM_A) - queue.counter(TEAM_B)))
        await asyncio.sleep(0.25)
    gained = {t: served.tokens.get(t, 0) - before.get(t, 0) for t in (TEAM_A, TEAM_B)}
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"tokens": gained, "max_counter_gap": gap, "refused": served.refused}


def _phase_shares(ctx: BenchContext, result: BenchResult) -> dict[str, Any]:
    from core.scheduling.fair_queue import OUTPUT_TOKEN_COST, PROMPT_TOKEN_COST

    seconds = ctx.scale(60, 8)
    measured: dict[str, Any] = {}
    rows = []
    for a_weight in (1.0, 2.0):
        services = _services(ctx, {TEAM_A: a_weight, TEAM_B: 1.0})
        try:
            m = ctx.run(_shares(services, seconds))
        finally:
            services.auditor.close()
        capacity = services.settings.engine_concurrency
        # VTC's bound: twice the cost of the most the engine holds at once (prompt ~ 64 tokens)
        bound = 2 * (PROMPT_TOKEN_COST * 64 + OUTPUT_TOKEN_COST * SHARE_TOKENS) * capacity
        got = ratio(m["tokens"][TEAM_A], m["tokens"][TEAM_B])
        name = f"{a_weight:g}:1"
        measured[name] = {**m, "ratio": got, "bound": bound}
        rows.append(
            [
                name,
                m["tokens"][TEAM_A],
                m["tokens"][TEAM_B],
                got,
                ratio(got, a_weight),
                m["max_counter_gap"],
                bound,
                m["refused"],
            ]
        )
        result.targets.append(
            target(
                f"fair share {name}: served ratio / weight ratio",
                ratio(got, a_weight),
                "x",
                "<=",
                1.1,
            )
        )
        result.targets.append(
            target(
                f"fair share {name}: served ratio / weight ratio (low side)",
                ratio(got, a_weight),
                "x",
                ">=",
                0.9,
            )
        )
    result.tables.append(
        Table(
            f"Shares: two backlogged teams, 16 streams x {SHARE_TOKENS} tokens each, "
            f"{seconds} s window; counters in weighted tokens",
            [
                "weights A:B",
                "A tokens",
                "B tokens",
                "A/B",
                "A/B / weights",
                "max counter gap",
                "VTC bound (2 x largest batch cost)",
                "refused",
            ],
            rows,
        )
    )
    return measured


def _decision_cost(decisions: int) -> dict[str, float]:
    """Nanoseconds per admission decision: a finish that frees a place and the admission."""
    from core.scheduling.fair_queue import FairQueue, Ticket

    queue = FairQueue(capacity=16, ceiling=64, team_cap=64, weight=lambda team: 1.0)
    teams = [f"team{i}" for i in range(10)]
    running: list[Ticket] = []
    for i in range(200):
        running += queue.arrive(Ticket(teams[i % 10], 100))
    rng = random.Random(3)
    timings = []
    for _ in range(decisions):
        done = running.pop(rng.randrange(len(running)))
        queue.charge_output(done, 64)
        started = time.perf_counter_ns()
        running += queue.finish(done)
        timings.append(time.perf_counter_ns() - started)
        running += queue.arrive(Ticket(rng.choice(teams), 100))  # everyone stays backlogged
    return {"p50_ms": percentile(timings, 50) / 1e6, "p99_ms": percentile(timings, 99) / 1e6}


async def _throughput(services: Any, requests: int) -> float:
    from bench.common import RequestStats, closed_loop

    served = Served()

    async def call(i: int) -> RequestStats:
        await _turn(services, TEAM_A, i, 48, served)
        return RequestStats(0.0, 0, 0.0)

    load = await closed_loop(call, requests, 16)
    return served.tokens.get(TEAM_A, 0) / load.wall


def _phase_cost(ctx: BenchContext, result: BenchResult) -> dict[str, Any]:
    cost = _decision_cost(ctx.scale(20000, 2000))
    reps, requests = ctx.scale(3, 1), ctx.scale(32, 16)
    ratios: list[float] = []
    pairs: list[dict[bool, float]] = []
    for _ in range(reps):
        tps: dict[bool, float] = {}
        for on in (True, False) if len(pairs) % 2 == 0 else (False, True):  # alternate order
            services = _services(ctx, {TEAM_A: 1.0})
            if not on:
                services.scheduler = FirstComeFirstServed()
            try:
                tps[on] = ctx.run(_throughput(services, requests))
            finally:
                services.auditor.close()
        pairs.append(tps)
        ratios.append(ratio(tps[True], tps[False]))
    median = percentile(ratios, 50)
    result.tables.append(
        Table(
            "Cost of the scheduler: one admission decision (10 backlogged teams), and "
            f"tokens/s of one team at concurrency 16, {requests} turns per side, alternated",
            ["decision p50 ms", "decision p99 ms", "on/off tokens/s ratios", "median", "spread"],
            [
                [
                    cost["p50_ms"],
                    cost["p99_ms"],
                    ", ".join(f"{r:.3f}" for r in ratios),
                    median,
                    max(ratios) - min(ratios),
                ]
            ],
        )
    )
    result.targets += [
        target("fair share: admission decision p50", cost["p50_ms"], "ms", "<", 0.1),
        target("fair share: tokens/s at concurrency 16, on / off", median, "x", ">=", 0.97),
    ]
    return {"decision": cost, "throughput_pairs": pairs, "ratios": ratios}


def run(ctx: BenchContext) -> BenchResult:
    """Noisy neighbour, shares by weight and the scheduler's cost (see the module doc)."""
    result = BenchResult("fairness", "3. Fair share of the engine")
    result.data = {
        "neighbour": _phase_neighbour(ctx, result),
        "shares": _phase_shares(ctx, result),
        "cost": _phase_cost(ctx, result),
    }
    result.notes.append(
        "The scheduler runs in each app process; `scheduler off` is the product with every "
        "turn sent to the engine at once (vLLM's own first-come order)."
    )
    return result
