"""Benchmark: what a token budget adds to a chat turn, on SQLite and PostgreSQL.

Per backend, one product `Services` on that database (the product engine, shared by the run)
with two bench tenants (retrieval off): `free` has no budget, `metered` has a team day and
month budget and a per-member default, far above what the run uses, so every turn of it is
reserved before and settled after. Turns of the two alternate (which goes first swaps every
pair), through `start_chat_turn` and the whole stream, as the API and the UI run them.

Measured per turn:
* the turn's wall time (start_chat_turn until the stream ends);
* the time spent in the budget store during the turn (`reserve` and `settle` for `metered`;
  `known_without_budgets` for `free`), timed around the store's own methods.
Then the budget path alone, many times (reserve and settle each through `asyncio.to_thread`,
exactly as the turn calls them, so the thread hops count): the tail (p99) of a fast path
needs more samples than real turns can give in the time.

Ratios are the budget time over the free turn's time (p50 over p50, p99 over p99). The
difference of the two turns' percentiles is shown too: on a shared 2-core machine it is
mostly the engine's noise, which is why the budget time is measured where it is spent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.audit_overhead import _pg_schema, _pg_url
from bench.common import BenchContext, BenchResult, Table, ratio, summarize, target
from bench.engines import QUESTIONS, bench_tenant

FREE, METERED = "free", "metered"
BIG = 10**12  # a budget no run comes near: every turn is counted, none refused


class TimedBudgets:
    """The product's BudgetStore, with the seconds spent in it per call kept in `spent`."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.spent: list[float] = []

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.store, name)
        if name not in ("reserve", "settle", "known_without_budgets"):
            return value

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return value(*args, **kwargs)
            finally:
                self.spent.append(time.perf_counter() - started)

        return timed

    def take(self) -> float:
        """Seconds spent since the last call (and forget them)."""
        total, self.spent = sum(self.spent), []
        return total


def _services(ctx: BenchContext, name: str, url: str) -> Any:
    from core.budgets.admin import set_budget
    from core.services import build_services
    from core.tenancy import TenantRegistry

    settings = ctx.settings(
        name,
        database_url=url,
        rate_limit_user="10000000/minute",
        rate_limit_tenant="10000000/minute",
    )
    base = bench_tenant()
    tenants = TenantRegistry(
        [
            dataclasses.replace(base, id=FREE, display_name="Free"),
            dataclasses.replace(base, id=METERED, display_name="Metered"),
        ]
    )
    services = build_services(settings, tenants=tenants, engine=ctx.engine())
    budget = {"daily": BIG, "monthly": BIG, "member_daily": BIG}
    set_budget(url, METERED, budget, user=None, actor="bench")
    services.budgets = TimedBudgets(services.budgets)  # type: ignore[assignment]
    return services


def _principal() -> Any:
    from core.identity import Principal

    return Principal(
        subject="bench-user", email=None, kind="user",
        tenant_roles={FREE: "member", METERED: "member"},
    )  # fmt: skip


async def _turn(services: Any, tenant: str, i: int) -> tuple[float, float]:
    """One whole chat turn: (wall seconds, seconds spent in the budget store)."""
    from core.chat.request import ChatRequest
    from core.chat.turn import start_chat_turn

    request = ChatRequest(
        tenant_id=tenant, question=QUESTIONS[i % len(QUESTIONS)], max_tokens=4,
        temperature=0.0, seed=1, channel="api",
    )  # fmt: skip
    services.budgets.take()
    started = time.perf_counter()
    turn = await start_chat_turn(services, _principal(), request)
    async for _chunk in turn.stream():
        pass
    return time.perf_counter() - started, services.budgets.take()


async def _turns(services: Any, pairs: int) -> dict[str, list[tuple[float, float]]]:
    """`pairs` free and metered turns, alternating, the first of each pair swapping."""
    samples: dict[str, list[tuple[float, float]]] = {FREE: [], METERED: []}
    for warm in range(3):  # connections, compiled statements, the engine's prefix cache
        await _turn(services, FREE, warm)
        await _turn(services, METERED, warm)
    for i in range(pairs):
        order = (FREE, METERED) if i % 2 == 0 else (METERED, FREE)
        for tenant in order:
            samples[tenant].append(await _turn(services, tenant, i))
    return samples


async def _budget_path(store: Any, n: int) -> list[float]:
    """Seconds of reserve + settle of a metered member, each through a thread, `n` times."""
    spent = []
    for i in range(n):
        started = time.perf_counter()
        held = await asyncio.to_thread(
            store.reserve, METERED, f"user:{i % 20}", 300, team_name="Metered"
        )
        await asyncio.to_thread(store.settle, held, 120)
        spent.append(time.perf_counter() - started)
    return spent


def _ms(values: list[float]) -> dict[str, float]:
    stats = summarize([v * 1000.0 for v in values])
    return {"n": stats["n"], "p50": stats["p50"], "p99": stats["p99"]}


def _backend(ctx: BenchContext, name: str, url: str, pairs: int, loops: int) -> dict[str, Any]:
    services = _services(ctx, f"budgets-{name}", url)
    ctx.run(services.auditor.start())
    try:
        turns = ctx.run(_turns(services, pairs))
        alone = ctx.run(_budget_path(services.budgets.store, loops))
    finally:
        ctx.run(services.auditor.stop())
    free, metered = turns[FREE], turns[METERED]
    row: dict[str, Any] = {
        "backend": name,
        "free_turn_ms": _ms([t for t, _ in free]),
        "metered_turn_ms": _ms([t for t, _ in metered]),
        "free_budget_ms": _ms([b for _, b in free]),
        "metered_budget_ms": _ms([b for _, b in metered]),
        "budget_path_alone_ms": _ms(alone),
    }
    for q in ("p50", "p99"):
        row[f"ratio_{q}"] = ratio(row["metered_budget_ms"][q], row["free_turn_ms"][q])
        row[f"turn_diff_{q}_ms"] = row["metered_turn_ms"][q] - row["free_turn_ms"][q]
    return row


def _with_backends(ctx: BenchContext, result: BenchResult, each: Callable[[str, str], Any]) -> None:
    """Run `each(name, url)` on a fresh SQLite file and a fresh PostgreSQL schema."""
    from core.budgets.connections import dispose_budget_engines
    from core.db import dispose_engines

    each("sqlite", f"sqlite:///{Path(ctx.subdir('budgets')) / 'budgets.db'}")
    schema = f"bench_budgets_{os.getpid()}"
    try:
        _pg_schema(schema, create=True)
        each("postgresql", _pg_url(schema))
    except Exception as exc:  # report the failure, keep the SQLite figures
        result.notes.append(f"PostgreSQL run failed: {type(exc).__name__}: {exc}")
    finally:
        dispose_budget_engines()
        dispose_engines()
        try:
            _pg_schema(schema, create=False)
        except Exception as exc:
            result.notes.append(f"could not drop schema {schema}: {exc}")


def run(ctx: BenchContext) -> BenchResult:
    """The time a budget adds to a chat turn, on both databases, beside the turn without."""
    result = BenchResult("budgets", "Token budgets: what a budget adds to a chat turn")
    pairs, loops = ctx.scale(200, 20), ctx.scale(10_000, 300)
    rows: list[dict[str, Any]] = []
    _with_backends(
        ctx, result, lambda name, url: rows.append(_backend(ctx, name, url, pairs, loops))
    )
    result.data = {"backends": rows, "pairs": pairs, "budget_path_loops": loops}
    result.tables.append(_table(rows, pairs, loops))
    for r in rows:
        result.targets.append(
            target(
                f"budget time added to a turn, p50 ({r['backend']})",
                r["metered_budget_ms"]["p50"], "ms", "<", 1.0,
            )
        )  # fmt: skip
        result.targets.append(
            target(
                f"budget time of a team without budgets, p50 ({r['backend']})",
                r["free_budget_ms"]["p50"], "ms", "<", 0.05,
            )
        )  # fmt: skip
    result.notes.append(
        "Budget time: inside the budget store during the turn (without the thread hops); "
        "'alone' is reserve + settle each through asyncio.to_thread as the turn calls them "
        f"({loops:,} times). The turn: start_chat_turn to the stream's end, max_tokens 4, "
        "retrieval off, the real engine. Turn difference = metered minus free percentile "
        "(engine noise dominates it)."
    )
    return result


def _table(rows: list[dict[str, Any]], pairs: int, loops: int) -> Table:
    headers = [
        "backend", "free turn p50 ms", "free turn p99 ms", "metered turn p50 ms",
        "metered turn p99 ms", "budget in turn p50 ms", "budget in turn p99 ms",
        "ratio p50", "ratio p99", "turn diff p50 ms", "budget alone p50 ms",
        "budget alone p99 ms", "no-budget check p50 ms",
    ]  # fmt: skip
    body = [
        [
            r["backend"], r["free_turn_ms"]["p50"], r["free_turn_ms"]["p99"],
            r["metered_turn_ms"]["p50"], r["metered_turn_ms"]["p99"],
            r["metered_budget_ms"]["p50"], r["metered_budget_ms"]["p99"], r["ratio_p50"],
            r["ratio_p99"], r["turn_diff_p50_ms"], r["budget_path_alone_ms"]["p50"],
            r["budget_path_alone_ms"]["p99"], r["free_budget_ms"]["p50"],
        ]
        for r in rows
    ]  # fmt: skip
    caption = (
        f"{pairs} turns each of a team without budgets (free) and with (metered), alternating; "
        f"the budget path alone {loops:,} times"
    )
    return Table(caption, headers, body)
