"""Benchmark: retrieval from a Chroma server against the embedded store (issue 19).

The same documents are ingested into two `KnowledgeService`s on scratch data dirs: one with
each team's embedded Chroma store (the default), one on a `chroma run` server on this
machine (`TENANTLLM_CHROMA_URL`, the scale-out topology). Then the same questions go to both,
alternating which goes first, through `KnowledgeService.retrieve` (the query embedding,
the vector query, the keyword index and the fusion, as a chat turn does). The server side
adds one HTTP round trip to the vector query; the table gives its p50/p95 against the
embedded store's, measured side by side.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import BenchContext, BenchResult, Table, free_port, ratio, summarize, target
from bench.retrieval_bench import _questions, _tenants, _write_docs

TENANT = "docs"


def _service(folder: Any, **overrides: Any) -> Any:
    from core.config import Settings
    from core.db import upgrade_database
    from core.knowledge.service import KnowledgeService

    settings = Settings(data_dir=folder, **overrides)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_database(settings.resolved_database_url)
    return KnowledgeService(settings, _tenants([TENANT]))


def _timed(ks: Any, question: str) -> tuple[float, int]:
    tenant = ks.tenants.get(TENANT)
    started = time.perf_counter()
    found = ks.retrieve(tenant, question)
    return (time.perf_counter() - started) * 1000.0, len(found)


def run(ctx: BenchContext) -> BenchResult:
    """p50/p95 of `retrieve` on a Chroma server vs the embedded store, same docs, same run."""
    # The pytest run's server helper: the same `chroma run` the tests start, nothing of its own.
    from tests.fixtures.chroma_server import ChromaServer, unique_chroma_tenant

    result = BenchResult("retrieval_server", "Retrieval: Chroma server vs embedded store")
    work = ctx.subdir("retrieval-server")
    server = ChromaServer(free_port(), work / "chroma-data", work / "chroma.log")
    server.start()
    try:
        sides = {
            "embedded": _service(work / "embedded"),
            "server": _service(
                work / "server", chroma_url=server.url, chroma_tenant=unique_chroma_tenant()
            ),
        }
        docs = _write_docs(work / "docs", ctx.scale(20, 3), ctx.scale(1200, 400), ctx.seed)
        chunks = {}
        for name, ks in sides.items():
            ks.ingest(ks.tenants.get(TENANT), docs, "bench")
            chunks[name] = _timed(ks, "warm up")[1]
        questions = _questions(ctx.seed, ctx.scale(300, 20))
        for q in questions[:10]:  # warm up: the index, the model, the connection
            for ks in sides.values():
                ks.retrieve(ks.tenants.get(TENANT), q)
        ms: dict[str, list[float]] = {name: [] for name in sides}
        order = list(sides)
        for i, q in enumerate(questions):
            for name in order if i % 2 == 0 else order[::-1]:
                ms[name].append(_timed(sides[name], q)[0])
    finally:
        server.stop()
    stats = {name: summarize(values) for name, values in ms.items()}
    p95 = ratio(stats["server"]["p95"], stats["embedded"]["p95"])
    result.data = {"documents": len(docs), "stats_ms": stats, "server_vs_embedded_p95": p95}
    result.tables.append(
        Table(
            f"{len(docs)} documents, {len(questions)} questions each side, alternating; "
            "`KnowledgeService.retrieve` with the product's hybrid retrieval",
            ["store", "p50 ms", "p95 ms", "p99 ms", "sources per question"],
            [[name, s["p50"], s["p95"], s["p99"], chunks[name]] for name, s in stats.items()],
        )
    )
    result.targets.append(
        target("retrieval p95: Chroma server / embedded store", p95, "x", "<=", 1.5)
    )
    return result
