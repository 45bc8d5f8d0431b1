"""Benchmark: what the Prometheus metrics cost (issue 17, item 1's measure).

(a) The per-request cost, side by side in one run: two apps (create_app, in process, over
    httpx's ASGI transport) on the product's one engine, the same bench tenant (retrieval off)
    and the same request, `POST /v1/chat/completions` with an API key, 8 tokens, greedy. One
    app has metrics on (`TENANTLLM_METRICS_TOKEN` set: every observation and the HTTP
    middleware run), the other off (the default: every observation is a no-op). Requests
    alternate on/off (then off/on) so drift of the shared machine hits both alike; the
    figure is p50(on) / p50(off).
(b) The instrumentation alone: the exact calls one chat turn makes into core/metrics (turn,
    queue wait, TTFT, generation, retrieval, HTTP), timed in a loop, on vs off: the cost in
    microseconds that (a) cannot resolve against the engine's noise.
(c) Scrape time: `GET /metrics` of the "on" app after (a), and `render()` of a registry
    filled for 30 teams (every channel, outcome, error code, 20 routes), p50/p95.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import BenchContext, BenchResult, Table, ratio, summarize, target
from bench.engines import BENCH_TENANT, QUESTIONS, bench_tenant

TOKEN = "bench-metrics-" + "t" * 32
MAX_TOKENS = 8


def _app(ctx: BenchContext, name: str, metrics_on: bool) -> tuple[Any, str]:
    """An in-process app on the shared engine with the bench tenant; (app, API key)."""
    from core.auth.apikeys import create_key
    from core.server import create_app
    from core.services import build_services
    from core.tenancy import TenantRegistry

    settings = ctx.settings(
        name,
        metrics_token=TOKEN if metrics_on else "",
        rate_limit_user="100000/minute",
        rate_limit_tenant="100000/minute",
    )
    tenants = TenantRegistry([bench_tenant()])
    services = build_services(settings, tenants=tenants, engine=ctx.engine())
    ctx.run(services.auditor.start())
    key = create_key(settings, tenant_id=BENCH_TENANT, created_by="bench").secret
    return create_app(settings, services), key


async def _chat(client: Any, key: str, question: str) -> float:
    """Seconds for one non-streamed chat completion."""
    body = {
        "model": BENCH_TENANT,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "seed": 7,
    }
    started = time.perf_counter()
    answer = await client.post(
        "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
    )
    elapsed = time.perf_counter() - started
    if answer.status_code != 200:
        raise RuntimeError(f"chat failed: {answer.status_code} {answer.text[:300]}")
    return elapsed


def _client(app: Any) -> Any:
    import httpx

    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=600)


def _paired(ctx: BenchContext, apps: dict[str, tuple[Any, str]], pairs: int) -> dict[str, Any]:
    """Chat latencies (ms) per side, alternating on/off then off/on."""

    async def go() -> dict[str, list[float]]:
        times: dict[str, list[float]] = {"on": [], "off": []}
        clients = {side: _client(app) for side, (app, _) in apps.items()}
        for side in ("on", "off"):  # warm-up: first-use costs of both apps, not measured
            await _chat(clients[side], apps[side][1], QUESTIONS[0])
        for i in range(pairs):
            order = ("on", "off") if i % 2 == 0 else ("off", "on")
            for side in order:
                question = QUESTIONS[i % len(QUESTIONS)]
                times[side].append(1000 * await _chat(clients[side], apps[side][1], question))
        for client in clients.values():
            await client.aclose()
        return times

    return ctx.run(go())


def _one_turn_of_calls(metrics: Any) -> None:
    """Exactly the calls one accepted, answered API chat turn makes into core/metrics."""
    metrics.observe_retrieval("bench", 0.01)
    metrics.observe_queue_wait("bench", 0.0)
    metrics.observe_ttft("bench", 0.2)
    metrics.observe_generation("bench", 0.5)
    metrics.observe_turn("bench", "api", "ok", None, (120, 8))
    metrics.observe_http("/v1/chat/completions", "POST", 200, 0.7)


def _calls_cost_us(n: int) -> dict[str, float]:
    """Microseconds per turn of those calls, metrics on and off (median of 5 rounds)."""
    from core.metrics import Metrics

    out = {}
    for side, enabled in (("on", True), ("off", False)):
        metrics = Metrics(["bench"], enabled=enabled)
        rounds = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(n):
                _one_turn_of_calls(metrics)
            rounds.append((time.perf_counter() - started) / n * 1e6)
        out[side] = summarize(rounds)["p50"]
    return out


def _full_registry(teams: int) -> Any:
    """A registry with every series of `teams` teams (what a big deployment scrapes)."""
    from core.errors import BudgetExceeded, PermissionDenied, PromptTooLong, RateLimited
    from core.metrics import AuditBacklog, Metrics

    ids = [f"team{i:02d}" for i in range(teams)]
    metrics = Metrics(ids)
    metrics.watch_audit(lambda: AuditBacklog(3, 0, 0.2))
    metrics.watch_engine(lambda: True)
    errors: list[Exception | None] = [None, PermissionDenied("x")]
    errors.append(RateLimited("x", retry_after=1, limit="1/minute"))
    errors += [BudgetExceeded("x", retry_after=1, remaining=0), PromptTooLong("x"), ValueError()]
    for tenant in ids:
        for channel in ("ui", "api", "cli"):
            for outcome, error in zip(("ok", "denied", "rate_limited", "rate_limited", "error",
                                       "error"), errors, strict=True):  # fmt: skip
                metrics.observe_turn(tenant, channel, outcome, error, (100, 10))
        for observe in (metrics.observe_ttft, metrics.observe_generation,
                        metrics.observe_queue_wait, metrics.observe_retrieval):  # fmt: skip
            observe(tenant, 0.1)
        metrics.observe_indexing(tenant, "upload", 1.0, ("indexed", "duplicate", "refused"))
    for route in range(20):
        for status in (200, 401, 404, 429, 500):
            metrics.observe_http(f"/route/{route}", "GET", status, 0.01)
    return metrics


def _scrapes_ms(ctx: BenchContext, app: Any, n: int) -> list[float]:
    async def go() -> list[float]:
        spent = []
        async with _client(app) as client:
            for _ in range(n):
                started = time.perf_counter()
                answer = await client.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"})
                spent.append(1000 * (time.perf_counter() - started))
                if answer.status_code != 200:
                    raise RuntimeError(f"scrape failed: {answer.status_code}")
        return spent

    return ctx.run(go())


def _render_ms(metrics: Any, n: int) -> tuple[list[float], int]:
    spent = []
    for _ in range(n):
        started = time.perf_counter()
        text = metrics.render()
        spent.append(1000 * (time.perf_counter() - started))
    series = sum(1 for line in text.decode().splitlines() if not line.startswith("#"))
    return spent, series


def run(ctx: BenchContext) -> BenchResult:
    """Per-request cost of the metrics (on vs off, same run) and the scrape time."""
    result = BenchResult("metrics", "Metrics: per-request cost and scrape time")
    pairs = ctx.scale(60, 4)
    apps = {"on": _app(ctx, "metrics-on", True), "off": _app(ctx, "metrics-off", False)}
    try:
        times = _paired(ctx, apps, pairs)
        scrape = summarize(_scrapes_ms(ctx, apps["on"][0], ctx.scale(200, 20)))
    finally:
        for app, _ in apps.values():
            ctx.run(app.state.services.auditor.stop())
    on, off = summarize(times["on"]), summarize(times["off"])
    calls = _calls_cost_us(ctx.scale(20_000, 500))
    render_times, series = _render_ms(_full_registry(30), ctx.scale(200, 20))
    render = summarize(render_times)
    p50_ratio = ratio(on["p50"], off["p50"])
    share = ratio(calls["on"] - calls["off"], off["p50"] * 1000.0)
    result.data = {
        "pairs": pairs, "max_tokens": MAX_TOKENS, "chat_ms": {"on": on, "off": off},
        "p50_ratio_on_vs_off": p50_ratio, "calls_us_per_turn": calls, "calls_share": share,
        "scrape_ms": scrape, "render_30_teams_ms": render, "series_30_teams": series,
    }  # fmt: skip
    result.tables.append(
        Table(
            f"{pairs} chat turns per side ({MAX_TOKENS} tokens, in-process app, same engine), "
            "alternating on/off",
            ["metrics", "p50 ms", "p95 ms", "p50 ratio on/off", "calls into core/metrics µs"],
            [
                ["on", on["p50"], on["p95"], p50_ratio, calls["on"]],
                ["off (default)", off["p50"], off["p95"], 1.0, calls["off"]],
            ],
        )
    )
    result.tables.append(
        Table(
            "Scrape time",
            ["what", "p50 ms", "p95 ms"],
            [
                ["GET /metrics of the app after the run", scrape["p50"], scrape["p95"]],
                [f"render(), 30 teams ({series} series)", render["p50"], render["p95"]],
            ],
        )
    )
    result.targets += [
        target("metrics on/off chat turn p50 ratio", p50_ratio, "x", "<=", 1.05),
        # Load-proof: the calls' cost as a share of the uninstrumented turn, same run.
        target("metrics calls / chat turn p50", share, "x", "<=", 0.01),
        target("GET /metrics p95", scrape["p95"], "ms", "<=", 50),
        # Prometheus' default scrape timeout is 10 s; a big deployment must stay far below.
        target("/metrics render p95, 30 teams", render["p95"], "ms", "<=", 500),
    ]
    return result
