"""Prometheus metrics of one deployment: every metric defined once, with bounded labels.

Owner: operations (issue 17, item 1). `Metrics` holds its own `CollectorRegistry`, one per
`Services`, not prometheus_client's global one: vLLM registers its engine metrics there, and
two apps built in one process (tests, the benchmark) must neither share counters nor read
each other's audit queue. Request code calls the `observe_*` methods; the audit backlog and
the engine's readiness are read live at scrape time (`watch_audit`, `watch_engine`).

Label cardinality is bounded by construction, so a client cannot grow the series set:
`tenant` is a registered tenant id or "unknown"; `channel` is ui, api or cli; `outcome` the
audit outcome; `code` an error class's code from core/errors.py (or "internal"); `route` the
route template ("/v1/chat/completions", never a raw path: unmatched paths are "unmatched");
`method` a standard HTTP method or "other". Never a user id, an email or a key id.

Collection is off (every `observe_*` returns at once, nothing is registered) unless metrics
are exposed: `TENANTLLM_METRICS_TOKEN` (the app's `/metrics`) or `TENANTLLM_METRICS_LISTEN`
(`serve_metrics`: a separate port, for a scraper on an internal network) set.
bench/metrics_overhead.py measures the cost.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import (
    BudgetExceeded,
    ConfigError,
    NotAuthenticated,
    NotFound,
    PermissionDenied,
    RateLimited,
    TenantLLMError,
)

__all__ = [
    "CONTENT_TYPE",
    "AuditBacklog",
    "HttpMetrics",
    "Metrics",
    "check_scrape_token",
    "serve_metrics",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNKNOWN = "unknown"
_CHANNELS = frozenset({"ui", "api", "cli"})
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Seconds. TTFT and queue wait start small (a slot is usually free); generation runs long.
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_GENERATION = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
_INGEST = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class AuditBacklog(NamedTuple):
    """What waits for the audit database right now."""

    queued: int  # events in the writer's memory queue
    spooled: int  # events in this process's local spool file (the database was down)
    lag_seconds: float  # age of the oldest event not yet in the database; 0 when none


class Metrics:
    """Every metric of one deployment, labelled by team; a no-op when `enabled` is False."""

    def __init__(self, tenant_ids: Iterable[str], *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.registry = CollectorRegistry(auto_describe=True)
        self._tenants = frozenset(tenant_ids)
        if enabled:
            self._define(self.registry)

    def _define(self, r: CollectorRegistry) -> None:
        team = ("tenant", "channel")
        self.requests = _counter(r, "chat_requests", "Chat turns by outcome.", *team, "outcome")
        self.errors = _counter(r, "chat_errors", "Failed chat turns by error code.", *team, "code")
        self.refusals = _counter(r, "chat_refusals", "Chat turns refused as not allowed.", *team)
        self.rate_limited = _counter(
            r, "rate_limited", "Chat turns refused by a rate limit or a full queue.", *team
        )
        self.budget_hits = _counter(r, "budget_exceeded", "Turns refused by a budget.", *team)
        self.tokens = _counter(
            r, "tokens", "Tokens through the engine (in: prompt, out: completion).",
            *team, "direction",
        )  # fmt: skip
        self.ttft = _histogram(r, "ttft", "Time to the first token of an answer.", _LATENCY)
        self.generation = _histogram(r, "generation", "Time generating one answer.", _GENERATION)
        self.queue_wait = _histogram(r, "queue_wait", "Wait for a place in the engine.", _LATENCY)
        self.retrieval = _histogram(r, "retrieval", "Retrieval of a team's chunks.", _LATENCY)
        self.indexing = _histogram(
            r, "index", "One upload batch or re-index of a team.", _INGEST, "operation"
        )
        self.documents = _counter(
            r, "documents", "Files through ingestion by outcome (indexed, duplicate, refused).",
            "tenant", "status",
        )  # fmt: skip
        self.http = _counter(
            r, "http_requests", "HTTP requests by route template.", "route", "method", "status"
        )
        self.http_seconds = Histogram(
            "tenantllm_http_request_seconds", "HTTP request duration by route template.",
            ("route",), registry=r,
        )  # fmt: skip

    # --- labels --------------------------------------------------------------------------
    def tenant(self, tenant_id: str | None) -> str:
        """The `tenant` label: a registered tenant's id, else "unknown" (never client text)."""
        return tenant_id if tenant_id in self._tenants else UNKNOWN

    def _team(self, tenant_id: str | None, channel: str) -> tuple[str, str]:
        return self.tenant(tenant_id), channel if channel in _CHANNELS else UNKNOWN

    # --- chat turns ----------------------------------------------------------------------
    def observe_turn(
        self,
        tenant_id: str | None,
        channel: str,
        outcome: str,
        error: BaseException | None = None,
        tokens: tuple[int, int] = (0, 0),
    ) -> None:
        """Count one finished chat turn: its outcome, why it failed, the tokens it used."""
        if not self.enabled:
            return
        team = self._team(tenant_id, channel)
        self.requests.labels(*team, outcome).inc()
        if isinstance(error, PermissionDenied):
            self.refusals.labels(*team).inc()
        elif isinstance(error, BudgetExceeded):
            self.budget_hits.labels(*team).inc()
        elif isinstance(error, RateLimited):
            self.rate_limited.labels(*team).inc()
        elif error is not None:
            code = error.code if isinstance(error, TenantLLMError) else "internal"
            self.errors.labels(*team, code).inc()
        if tokens[0] or tokens[1]:
            self.tokens.labels(*team, "in").inc(max(tokens[0], 0))
            self.tokens.labels(*team, "out").inc(max(tokens[1], 0))

    def observe_queue_wait(self, tenant_id: str, seconds: float) -> None:
        """How long a turn waited for its place in the engine (core/scheduling)."""
        if self.enabled:
            self.queue_wait.labels(self.tenant(tenant_id)).observe(seconds)

    def observe_ttft(self, tenant_id: str, seconds: float) -> None:
        """Time from the turn's start to its first generated chunk."""
        if self.enabled:
            self.ttft.labels(self.tenant(tenant_id)).observe(seconds)

    def observe_generation(self, tenant_id: str, seconds: float) -> None:
        """Time the engine took for one whole answer (place taken to last token)."""
        if self.enabled:
            self.generation.labels(self.tenant(tenant_id)).observe(seconds)

    # --- knowledge -----------------------------------------------------------------------
    def observe_retrieval(self, tenant_id: str, seconds: float) -> None:
        """One retrieval over a team's documents."""
        if self.enabled:
            self.retrieval.labels(self.tenant(tenant_id)).observe(seconds)

    def observe_indexing(
        self, tenant_id: str, operation: str, seconds: float, statuses: Iterable[str] = ()
    ) -> None:
        """One upload batch (`operation` "upload", one status per file) or re-index."""
        if not self.enabled:
            return
        tenant = self.tenant(tenant_id)
        self.indexing.labels(tenant, operation).observe(seconds)
        for status in statuses:
            self.documents.labels(tenant, status).inc()

    # --- HTTP ----------------------------------------------------------------------------
    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        """One HTTP request; `route` must be a template (see `HttpMetrics`)."""
        if not self.enabled:
            return
        method = method if method in _METHODS else "other"
        self.http.labels(route, method, str(status)).inc()
        self.http_seconds.labels(route).observe(seconds)

    # --- live values, read at scrape time ------------------------------------------------
    def watch_audit(self, backlog: Callable[[], AuditBacklog]) -> None:
        """Expose the audit writer's queue depth, spool size and write lag."""
        if not self.enabled:
            return
        gauges = (
            ("tenantllm_audit_queue_depth", "Audit events queued in memory for the writer."),
            ("tenantllm_audit_spool_events", "Audit events in the local spool (database down)."),
            ("tenantllm_audit_write_lag_seconds", "Age of the oldest audit event not yet stored."),
        )
        for index, (name, doc) in enumerate(gauges):
            gauge = Gauge(name, doc, registry=self.registry)
            gauge.set_function(lambda i=index: float(backlog()[i]))  # type: ignore[misc]

    def watch_engine(self, ready: Callable[[], bool]) -> None:
        """Expose the engine's readiness: 1 ready, 0 starting or unavailable."""
        if self.enabled:
            gauge = Gauge(
                "tenantllm_engine_ready", "1 when the engine can generate.", registry=self.registry
            )
            gauge.set_function(lambda: 1.0 if ready() else 0.0)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


def _counter(r: CollectorRegistry, name: str, doc: str, *labels: str) -> Counter:
    return Counter(f"tenantllm_{name}_total", doc, labels, registry=r)


def _histogram(
    r: CollectorRegistry, name: str, doc: str, buckets: tuple[float, ...], *labels: str
) -> Histogram:
    labels = ("tenant", *labels)
    return Histogram(f"tenantllm_{name}_seconds", doc, labels, buckets=buckets, registry=r)


class HttpMetrics:
    """ASGI middleware: every HTTP request counted by route template, method and status.

    The route is read after the app routed the request (FastAPI puts the matched route in
    the scope), so it is always a template; a path no route matched is "unmatched". The
    `Metrics` object is looked up on the app (`app.state.metrics`) before the call: a
    mounted sub-app (Gradio) replaces `scope["app"]` on its way in.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Time and count one request (websockets and lifespan pass through)."""
        metrics = getattr(getattr(scope.get("app"), "state", None), "metrics", None)
        if scope["type"] != "http" or not isinstance(metrics, Metrics) or not metrics.enabled:
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets if the app raises before answering
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            metrics.observe_http(route, scope["method"], status, time.perf_counter() - started)


def check_scrape_token(authorization: str | None, token: str) -> None:
    """Allow a scrape only with `Authorization: Bearer <token>` (compared in constant time).

    Raises NotFound while no token is set (metrics are off), NotAuthenticated otherwise.
    """
    if not token:
        raise NotFound("Not found.")
    scheme, _, given = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise NotAuthenticated("Metrics need 'Authorization: Bearer <metrics token>'.")
    if not secrets.compare_digest(given.strip().encode(), token.encode()):
        raise NotAuthenticated("The metrics token is not valid.")


def serve_metrics(metrics: Metrics, listen: str) -> Callable[[], None]:
    """Serve `metrics` on `listen` ("host:port") with prometheus_client's own HTTP server.

    No token there: bind it to an address only the scraper reaches. Returns the function
    that stops it. ConfigError when the address cannot be bound (in use, not ours).
    """
    host, _, port = listen.rpartition(":")
    try:
        server, thread = start_http_server(
            int(port), addr=host.strip("[]"), registry=metrics.registry
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"TENANTLLM_METRICS_LISTEN: cannot listen on {listen!r} ({exc})."
        ) from None

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop
