"""The services one process needs, built once and handed to every entry point.

The web app builds them in its lifespan; CLI commands build them for one command. Nothing
here is global state: tests build their own `Services` with their own settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from core.audit.auditor import Auditor
from core.auth.group_mapping import GroupMapping
from core.budgets.store import BudgetStore
from core.config import Settings
from core.db import upgrade_database
from core.engine import Engine, create_engine
from core.knowledge.ingest_worker import IngestJobs
from core.knowledge.service import KnowledgeService
from core.limits import Limits
from core.metrics import Metrics
from core.plugins import load_tenants
from core.scheduling.scheduler import FairScheduler
from core.scheduling.weights import WeightBook
from core.siem.deliverer import SiemRunner
from core.tenancy import TenantRegistry


@dataclass
class Services:
    """Everything a request handler may use, for one deployment."""

    settings: Settings
    tenants: TenantRegistry
    knowledge: KnowledgeService
    auditor: Auditor
    limits: Limits
    groups: GroupMapping
    budgets: BudgetStore
    scheduler: FairScheduler
    metrics: Metrics
    siem: SiemRunner  # audit rows to the SIEM sinks, and the alert rules
    ingest_jobs: IngestJobs  # uploads indexed in the background, one job per file
    engine: Engine | None = None
    # The response cache's Redis (core/chat/response_cache.py); None without TENANTLLM_REDIS_URL.
    redis: aioredis.Redis | None = None


def build_services(
    settings: Settings,
    *,
    tenants: TenantRegistry | None = None,
    engine: Engine | None = None,
    with_engine: bool = False,
) -> Services:
    """Prepare the database schema and build every service (the engine is not started).

    `tenants`: these instead of the installed plugins' (the benchmark's own tenants).
    `engine`: this engine (one shared by several builds); else `with_engine` creates one
    for `settings`, and without either there is none (CLI commands that do not generate).
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_database(settings.resolved_database_url)
    if tenants is None:
        tenants = load_tenants(settings)
    if engine is None and with_engine:
        engine = create_engine(settings)
    weights = {t.id: t.weight for t in tenants.all()}
    # Collected only when someone can scrape them (core/metrics.py).
    metrics = Metrics(weights, enabled=bool(settings.metrics_token or settings.metrics_listen))
    knowledge = KnowledgeService(settings, tenants, metrics=metrics)
    auditor = Auditor(settings)
    services = Services(
        settings=settings,
        tenants=tenants,
        knowledge=knowledge,
        auditor=auditor,
        limits=Limits(settings),
        groups=GroupMapping(settings),
        budgets=BudgetStore(settings.resolved_database_url, settings.budget_cache_seconds),
        scheduler=FairScheduler(settings, WeightBook(settings.resolved_database_url, weights)),
        metrics=metrics,
        siem=SiemRunner(settings),
        ingest_jobs=IngestJobs(settings, knowledge, auditor),
        engine=engine,
        redis=_redis_client(settings),
    )
    _watch_live_values(services)
    return services


def _redis_client(settings: Settings) -> aioredis.Redis | None:
    """An async client of `TENANTLLM_REDIS_URL` (connects on first use), or None."""
    if not settings.redis_url:
        return None
    # Short timeouts: a Redis that does not answer is a cache miss, not a stuck turn.
    return aioredis.Redis.from_url(
        settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5
    )


def _watch_live_values(services: Services) -> None:
    """What the metrics read at scrape time: the audit backlog, the engine's readiness."""
    services.metrics.watch_audit(services.auditor.backlog)
    # services.engine, not the engine now: tests and the benchmark swap it after the build.
    services.metrics.watch_engine(lambda: services.engine is not None and services.engine.ready)
