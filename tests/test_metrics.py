"""Prometheus `/metrics` (core/metrics.py): the token, exact counter moves per team, bounded
labels (no user ids), the live audit and engine gauges, and the Grafana dashboard's queries.

The real app (create_app) in process with the fake engine and the official `openai` client;
one test repeats the chat with the real vLLM engine. Counters are compared before and after
each step, so every assertion is an exact delta of what the step did.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.auth.apikeys import create_key
from core.budgets.admin import set_budget
from core.chat.request import ChatRequest
from core.config import Settings
from core.identity import Principal
from tests.fixtures.common import BUNDLED_MODEL_DIR, REPO
from tests.test_api import QUESTION, async_client
from tests.test_chat import audit_events

TOKEN = "m3tr1cs-" + "x" * 32
AUTH = {"authorization": f"Bearer {TOKEN}"}
DASHBOARD = REPO / "deploy" / "grafana" / "tenantllm.json"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@asynccontextmanager
async def metered_app(data_dir: Path, engine: Any = None, **overrides: Any) -> AsyncIterator[Any]:
    """The real app on fresh services with metrics on; the fake engine unless one is given."""
    from core.server import create_app
    from core.services import build_services
    from tests.fake_engine import FakeEngine

    settings = Settings(
        data_dir=data_dir, model=str(BUNDLED_MODEL_DIR), metrics_token=TOKEN, **overrides
    )
    services = build_services(settings)
    own_engine = engine is None
    services.engine = FakeEngine(settings) if own_engine else engine
    if own_engine:
        await services.engine.start()
    await services.auditor.start()
    try:
        yield create_app(settings, services)
    finally:
        await services.auditor.stop()
        if own_engine:
            await services.engine.stop()


def http(app: Any) -> httpx.AsyncClient:
    """A plain HTTP client on the in-process app."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def scrape(app: Any) -> Samples:
    """Every sample of one authorized scrape, keyed by (name, labels); `_created` left out."""
    async with http(app) as client:
        answer = await client.get("/metrics", headers=AUTH)
    assert answer.status_code == 200, answer.text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when the series does not exist yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def changed(before: Samples, after: Samples) -> dict[tuple[str, frozenset[Any]], float]:
    """The series that moved between two scrapes, with how much (per-team series only)."""
    return {
        key: after[key] - before.get(key, 0.0)
        for key in after
        if after[key] != before.get(key, 0.0) and dict(key[1]).get("tenant")
    }


def counted(before: Samples, after: Samples) -> dict[tuple[str, frozenset[Any]], float]:
    """The per-team counters that moved (histograms left out)."""
    parts = ("_bucket", "_sum", "_count")
    return {k: v for k, v in changed(before, after).items() if not k[0].endswith(parts)}


def key_for(app: Any, tenant: str) -> tuple[str, str]:
    """A new API key of `tenant` on the app's database: (secret, key id)."""
    made = create_key(app.state.services.settings, tenant_id=tenant, created_by="test")
    return made.secret, made.key.id


async def ask(app: Any, secret: str, model: str) -> Any:
    """One non-streamed chat completion (max 6 tokens)."""
    return await async_client(app, secret).chat.completions.create(
        model=model, messages=QUESTION, max_tokens=6
    )


# --- the token -------------------------------------------------------------------------------


async def test_scrape_needs_the_metrics_token_and_refusals_are_audited(tmp_path: Path) -> None:
    async with metered_app(tmp_path) as app, http(app) as client:
        refused = [
            await client.get("/metrics"),
            await client.get("/metrics", headers={"authorization": "Bearer wrong-token"}),
            await client.get("/metrics", headers={"authorization": f"Basic {TOKEN}"}),
            await client.get("/metrics", headers={"authorization": f"Bearer {TOKEN[:-1]}"}),
            # A browser-like request is answered, not sent to the sign-in page.
            await client.get("/metrics", headers={"accept": "text/html"}, follow_redirects=False),
        ]
        allowed = await client.get("/metrics", headers=AUTH)
    for answer in refused:
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "invalid_api_key"
        assert answer.headers["www-authenticate"] == "Bearer"
        assert "tenantllm_" not in answer.text
    assert allowed.status_code == 200
    assert allowed.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE tenantllm_chat_requests_total counter" in allowed.text
    rows = [e for e in audit_events(app.state.services) if e.action == "metrics"]
    assert [(r.outcome, r.status) for r in rows] == [("denied", 401)] * 5


async def test_metrics_are_off_while_the_token_is_empty(tmp_path: Path) -> None:
    from core.server import create_app
    from core.services import build_services

    settings = Settings(data_dir=tmp_path, model=str(BUNDLED_MODEL_DIR))
    services = build_services(settings)
    app = create_app(settings, services)
    async with http(app) as client:
        for headers in ({"accept": "text/html"}, {"authorization": "Bearer anything"}):
            answer = await client.get("/metrics", headers=headers, follow_redirects=False)
            assert answer.status_code == 404
            assert answer.json()["error"]["code"] == "not_found"
    # Nothing is collected either: no metric is registered, observing is a no-op.
    services.metrics.observe_turn("sales", "api", "ok", None, (10, 5))
    assert not services.metrics.enabled and services.metrics.render() == b""


def test_separate_listen_address_serves_the_same_registry(tmp_path: Path) -> None:
    from core.errors import ConfigError
    from core.metrics import serve_metrics
    from core.services import build_services
    from tests.fixtures.common import free_port

    listen = f"127.0.0.1:{free_port()}"
    settings = Settings(data_dir=tmp_path, model=str(BUNDLED_MODEL_DIR), metrics_listen=listen)
    services = build_services(settings)
    assert services.metrics.enabled  # a listener alone turns collection on
    stop = serve_metrics(services.metrics, listen)
    try:
        services.metrics.observe_turn("finance", "cli", "ok", None, (40, 2))
        text = httpx.get(f"http://{listen}/metrics", timeout=10).text
        assert 'tenantllm_chat_requests_total{channel="cli",outcome="ok",tenant="finance"} 1.0' in (
            text
        )
        with pytest.raises(ConfigError, match="TENANTLLM_METRICS_LISTEN"):
            serve_metrics(services.metrics, listen)  # the port is taken
    finally:
        stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{listen}/metrics", timeout=5)


# --- counters move by exactly what was asked, per team ---------------------------------------


async def test_each_team_moves_only_its_own_series_by_exactly_its_requests(
    tmp_path: Path,
) -> None:
    async with metered_app(tmp_path) as app:
        sales, _ = key_for(app, "sales")
        finance, _ = key_for(app, "finance")
        start = await scrape(app)
        first = await ask(app, sales, "sales")
        second = await ask(app, sales, "sales")
        after_sales = await scrape(app)
        await ask(app, finance, "finance")
        after_finance = await scrape(app)
    moved = changed(start, after_sales)
    assert {dict(k[1])["tenant"] for k in moved} == {"sales"}
    team = {"tenant": "sales", "channel": "api"}
    prompt = first.usage.prompt_tokens + second.usage.prompt_tokens
    completion = first.usage.completion_tokens + second.usage.completion_tokens
    assert value(after_sales, "tenantllm_chat_requests_total", **team, outcome="ok") == 2
    assert value(after_sales, "tenantllm_tokens_total", **team, direction="in") == prompt
    assert value(after_sales, "tenantllm_tokens_total", **team, direction="out") == completion
    for histogram in ("ttft", "generation", "queue_wait", "retrieval"):
        name = f"tenantllm_{histogram}_seconds_count"
        assert value(after_sales, name, tenant="sales") == 2, histogram
    # Finance's one request moves finance's series only, by one request.
    moved = changed(after_sales, after_finance)
    assert {dict(k[1])["tenant"] for k in moved} == {"finance"}
    finance_ok = {"tenant": "finance", "channel": "api", "outcome": "ok"}
    assert value(after_finance, "tenantllm_chat_requests_total", **finance_ok) == 1
    assert value(after_finance, "tenantllm_ttft_seconds_count", tenant="finance") == 1


async def test_cross_team_denial_rate_limit_and_budget_hit_are_counted_once_each(
    tmp_path: Path,
) -> None:
    async with metered_app(tmp_path, rate_limit_user="2/minute") as app:
        sales, _ = key_for(app, "sales")
        set_budget(app.state.services.settings.resolved_database_url, "development",
                   {"daily": 0}, user=None, actor="test")  # fmt: skip
        before = await scrape(app)
        with pytest.raises(openai.PermissionDeniedError):
            await ask(app, sales, "finance")  # a sales key asking for finance
        after_denial = await scrape(app)
        # The denial came before the rate limit counted: two more are allowed, then 429.
        await ask(app, sales, "sales")
        await ask(app, sales, "sales")
        with pytest.raises(openai.RateLimitError):
            await ask(app, sales, "sales")
        after_limit = await scrape(app)
        development, _ = key_for(app, "development")
        with pytest.raises(openai.RateLimitError) as spent:
            await ask(app, development, "development")
        after_budget = await scrape(app)
    assert spent.value.code == "budget_exceeded"
    assert counted(before, after_denial) == {
        ("tenantllm_chat_requests_total", _labels("finance", outcome="denied")): 1.0,
        ("tenantllm_chat_refusals_total", _labels("finance")): 1.0,
    }
    limited = counted(after_denial, after_limit)
    assert limited[("tenantllm_rate_limited_total", _labels("sales"))] == 1.0
    assert limited[("tenantllm_chat_requests_total", _labels("sales", outcome="rate_limited"))] == 1
    assert limited[("tenantllm_chat_requests_total", _labels("sales", outcome="ok"))] == 2
    assert counted(after_limit, after_budget) == {
        ("tenantllm_chat_requests_total", _labels("development", outcome="rate_limited")): 1.0,
        ("tenantllm_budget_exceeded_total", _labels("development")): 1.0,
    }


def _labels(tenant: str, **more: str) -> frozenset[tuple[str, str]]:
    return frozenset({"tenant": tenant, "channel": "api", **more}.items())


# --- bounded labels: no user, no raw path ----------------------------------------------------


async def test_no_user_id_email_key_or_raw_path_reaches_the_scrape(tmp_path: Path) -> None:
    from core.chat.turn import start_chat_turn

    async with metered_app(tmp_path) as app, http(app) as client:
        secret, key_id = key_for(app, "sales")
        await ask(app, secret, "sales")
        person = Principal(
            subject="sub-7f3a9c", email="alice.metrics@example.com", kind="user",
            tenant_roles={"finance": "member"}, name="Alice Metrics",
        )  # fmt: skip
        turn = await start_chat_turn(
            app.state.services, person, ChatRequest(tenant_id="finance", question="Hello?")
        )
        async for _chunk in turn.stream():
            pass
        await client.get("/v1/models/sales", headers={"authorization": f"Bearer {secret}"})
        await client.get("/no/such/page-9d2e", headers={"accept": "application/json"})
        await client.post("/v1/chat/completions", json={"model": "no-team-4b1c", "messages": []})
        text = (await client.get("/metrics", headers=AUTH)).text
        samples = await scrape(app)
    for secret_text in ("sub-7f3a9c", "alice", "example.com", key_id, "key:", secret[:12]):
        assert secret_text not in text, secret_text
    for raw in ("/v1/models/sales", "page-9d2e", "no-team-4b1c"):
        assert raw not in text, raw
    ui = {"tenant": "finance", "channel": "ui", "outcome": "ok"}
    assert value(samples, "tenantllm_chat_requests_total", **ui) == 1
    route = {"route": "/v1/models/{model}", "method": "GET", "status": "200"}
    assert value(samples, "tenantllm_http_requests_total", **route) == 1
    tenants = {dict(k[1]).get("tenant") for k in samples} - {None}
    assert tenants <= {"sales", "finance", "development", "unknown"}


# --- live values: knowledge, audit backlog, engine -------------------------------------------


async def test_uploads_and_retrieval_are_counted_per_team(tmp_path: Path) -> None:
    async with metered_app(tmp_path) as app:
        services = app.state.services
        sales = services.tenants.get("sales")
        note = tmp_path / "pricing-note.txt"
        note.write_text("Annual contracts of the metrics team get a 12% discount.\n")
        before = await scrape(app)
        services.knowledge.ingest(sales, [note], uploaded_by="sub-uploader")
        services.knowledge.ingest(sales, [note], uploaded_by="sub-uploader")  # a duplicate
        services.knowledge.retrieve(sales, "discount for annual contracts")
        after = await scrape(app)
    moved = {k: v for k, v in changed(before, after).items() if not k[0].endswith(_PARTS)}
    sales_only = frozenset({"tenant": "sales"}.items())
    assert moved == {
        ("tenantllm_documents_total", sales_only | {("status", "indexed")}): 1.0,
        ("tenantllm_documents_total", sales_only | {("status", "duplicate")}): 1.0,
        ("tenantllm_index_seconds_count", sales_only | {("operation", "upload")}): 2.0,
        ("tenantllm_retrieval_seconds_count", sales_only): 1.0,
    }
    assert "sub-uploader" not in str(after)


_PARTS = ("_sum", "_bucket")


def test_audit_backlog_reports_queue_spool_and_the_oldest_waiting_event(tmp_path: Path) -> None:
    from core.audit.auditor import AuditEvent, to_payload
    from core.audit.chain import format_time
    from core.audit.spool import Spool
    from core.audit.writer import AuditWriter
    from core.metrics import Metrics

    # A database that cannot answer (nothing listens on port 1): batches go to the spool.
    writer = AuditWriter("postgresql+psycopg://nobody@127.0.0.1:1/none", Spool(tmp_path), 0.05)
    metrics = Metrics(["sales"])
    metrics.watch_audit(writer.backlog)
    assert writer.backlog() == (0, 0, 0.0)
    event = to_payload(AuditEvent(action="chat", outcome="ok"), keep_prompt_text=False)
    event["created_at"] = format_time(datetime.now(UTC) - timedelta(seconds=90))
    writer.queue.append(event)  # queued, writer not running yet
    queued = writer.backlog()
    assert queued.queued == 1 and queued.spooled == 0 and queued.lag_seconds >= 90
    assert writer.flush(timeout=60)  # the database fails: the event is spooled
    spooled = writer.backlog()
    assert spooled.queued == 0 and spooled.spooled == 1 and spooled.lag_seconds >= 90
    text = metrics.render().decode()
    assert "tenantllm_audit_spool_events 1.0" in text
    assert "tenantllm_audit_queue_depth 0.0" in text
    lag = re.search(r"^tenantllm_audit_write_lag_seconds (\S+)$", text, re.M)
    assert lag is not None and float(lag.group(1)) >= 90
    writer.stop(timeout=5)


async def test_engine_ready_gauge_reads_the_engine_at_scrape_time(tmp_path: Path) -> None:
    async with metered_app(tmp_path) as app:
        services = app.state.services
        assert value(await scrape(app), "tenantllm_engine_ready") == 1
        engine, services.engine = services.engine, None
        try:
            assert value(await scrape(app), "tenantllm_engine_ready") == 0
        finally:
            services.engine = engine


# --- the real engine -------------------------------------------------------------------------


@pytest.mark.engine
async def test_real_engine_turn_moves_tokens_and_ttft(tmp_path: Path, engine: Any) -> None:
    async with metered_app(tmp_path, engine=engine) as app:
        secret, _ = key_for(app, "sales")
        before = await scrape(app)
        answer = await ask(app, secret, "sales")
        after = await scrape(app)
    team = {"tenant": "sales", "channel": "api"}
    moved = changed(before, after)
    assert moved[("tenantllm_tokens_total", frozenset({**team, "direction": "in"}.items()))] == (
        answer.usage.prompt_tokens
    )
    assert moved[("tenantllm_tokens_total", frozenset({**team, "direction": "out"}.items()))] == (
        answer.usage.completion_tokens
    )
    assert value(after, "tenantllm_ttft_seconds_count", tenant="sales") == 1
    assert value(after, "tenantllm_generation_seconds_count", tenant="sales") == 1
    assert value(after, "tenantllm_engine_ready") == 1


# --- the Grafana dashboard -------------------------------------------------------------------


def test_grafana_dashboard_queries_only_metrics_that_exist() -> None:
    from core.metrics import AuditBacklog, Metrics

    dashboard = json.loads(DASHBOARD.read_text())
    metrics = Metrics(["sales"])
    metrics.watch_audit(lambda: AuditBacklog(0, 0, 0.0))
    metrics.watch_engine(lambda: True)
    families = list(text_string_to_metric_families(metrics.render().decode()))
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    exposed = {f.name + s for f in families for s in suffixes[f.type]}
    panels = [p for p in dashboard["panels"] if p.get("type") != "row"]
    queried = {
        name
        for panel in panels
        for target in panel["targets"]
        for name in re.findall(r"\btenantllm_[a-z_]+", target["expr"])
    }
    assert len(panels) >= 7 and queried, "the dashboard should have its panels"
    assert queried - exposed == set()
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("requests/s", "tokens/s", "ttft p95", "queue wait p95", "refusals", "budget",
                  "audit"):  # fmt: skip
        assert topic in titles, topic
    # Per-team panels group by the tenant label; nothing groups by anything unbounded.
    per_team = [t["expr"] for p in panels if "team" in p["title"].lower() for t in p["targets"]]
    assert per_team and all("by (tenant" in expr for expr in per_team)
