"""Benchmark 4b: the embedding model on ONNX Runtime vs torch, side by side in one run.

Both models are the product's own (`core.knowledge.embeddings`): `torch_embedding_model()`
(sentence-transformers, the fallback) and the ONNX export `make setup` writes. Each one in turn
is made the process-wide model, so every figure goes through the product's code:

* Ingestion: the same text files through `KnowledgeService.ingest` (parse, split, embed,
  Chroma, BM25, registry) into two tenants, one per model, a warm-up file first for each.
* Retrieval: `KnowledgeService.retrieve` (query embedding included) on one tenant of 10k
  chunks (filled with precomputed vectors as bench/retrieval_bench.py does), a fresh
  KnowledgeService per model so that its index holds that model.
* The query embedding alone, and the ONNX runtime's threads (1 vs all) and batch size.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench.common import REPO, BenchContext, BenchResult, Table, ratio, summarize, target
from bench.retrieval_bench import _fill, _questions, _tenants, _write_docs


@contextmanager
def _process_model(model: Any) -> Iterator[None]:
    """Make `model` the process-wide embedding model for the block (the bench's only lever)."""
    from core.knowledge import embeddings

    saved = embeddings._model
    embeddings._model = model
    try:
        yield
    finally:
        embeddings._model = saved


def _ingest_rate(ks: Any, tenant: Any, model: Any, docs: list[Any], warm_up: Any) -> float:
    with _process_model(model):
        ks.ingest(tenant, [warm_up], "bench")
        started = time.perf_counter()
        outcomes = ks.ingest(tenant, docs, "bench")
        seconds = time.perf_counter() - started
    return sum(o.chunks for o in outcomes) / seconds


def _retrieval(settings: Any, tenants: Any, model: Any, questions: list[str]) -> dict[str, Any]:
    from core.knowledge.service import KnowledgeService

    with _process_model(model):
        ks = KnowledgeService(settings, tenants)  # its own index, holding `model`
        tenant = tenants.get("ten")
        for q in questions[:5]:  # warm up: open the index, the model
            ks.retrieve(tenant, q)
        times = []
        for q in questions:
            t0 = time.perf_counter()
            ks.retrieve(tenant, q)
            times.append((time.perf_counter() - t0) * 1000)
    embed = []
    for q in questions:
        t0 = time.perf_counter()
        model.get_query_embedding(q)
        embed.append((time.perf_counter() - t0) * 1000)
    return {"retrieve": summarize(times), "query_embedding": summarize(embed)}


def _runtime_options(onnx_dir: Any, texts: list[str], questions: list[str]) -> list[list[Any]]:
    """Query p95 and chunks/s of the ONNX runtime by intra-op threads and batch size."""
    from core.knowledge.embeddings import EMBEDDING_THREADS
    from core.knowledge.onnx_embedding import OnnxEmbedding

    rows = []
    for threads in sorted({1, EMBEDDING_THREADS}):
        for batch in (16, 32, 64):
            model = OnnxEmbedding(onnx_dir, embed_batch_size=batch, threads=threads)
            model.embed(texts[:batch])  # warm up
            started = time.perf_counter()
            model.get_text_embedding_batch(texts)
            rate = len(texts) / (time.perf_counter() - started)
            query = []
            for q in questions[:30]:
                t0 = time.perf_counter()
                model.get_query_embedding(q)
                query.append((time.perf_counter() - t0) * 1000)
            rows.append([threads, batch, rate, summarize(query)["p95"]])
    return rows


def run(ctx: BenchContext) -> BenchResult:
    """Ingestion chunks/s and retrieval p95 at 10k chunks, torch vs ONNX, in one run."""
    from core.config import Settings
    from core.db import upgrade_database
    from core.knowledge.embedding_export import ensure_onnx_export
    from core.knowledge.embeddings import load_embedding_model, torch_embedding_model
    from core.knowledge.onnx_embedding import OnnxEmbedding
    from core.knowledge.service import KnowledgeService

    result = BenchResult("embeddings", "4b. Embeddings: ONNX Runtime vs torch")
    work = ctx.subdir("embeddings")
    settings = Settings(data_dir=work / "data")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_database(settings.resolved_database_url)
    tenants = _tenants(["torch", "onnx", "ten"])
    ks = KnowledgeService(settings, tenants)
    onnx_dir = ensure_onnx_export(REPO / "data")
    torch_model, onnx_model = torch_embedding_model(), load_embedding_model(onnx_dir)
    assert isinstance(onnx_model, OnnxEmbedding), "the ONNX export did not load"

    from core.knowledge import parsing

    parsing.start_parser()  # as the app does at startup
    words = ctx.scale(8_000, 1_000)
    docs = _write_docs(work / "docs", ctx.scale(4, 1), words, ctx.seed)
    warm_up = _write_docs(work / "warm-up", 1, words // 4, ctx.seed + 1)[0]
    warm_up = warm_up.rename(warm_up.with_name("warm-up.txt"))
    ingest = {
        "torch": _ingest_rate(ks, tenants.get("torch"), torch_model, docs, warm_up),
        "onnx": _ingest_rate(ks, tenants.get("onnx"), onnx_model, docs, warm_up),
    }
    questions = _questions(ctx.seed, ctx.scale(100, 20))
    size = ctx.scale(10_000, 1_000)
    texts = [" ".join(questions[i % len(questions)].split()[2:]) * 3 for i in range(500)]
    base = (texts, onnx_model.embed(texts))
    with _process_model(onnx_model):
        _fill(ks, tenants.get("ten"), size, base, ctx.seed)
    retrieval = {
        "torch": _retrieval(settings, tenants, torch_model, questions),
        "onnx": _retrieval(settings, tenants, onnx_model, questions),
    }
    chunk_texts = [t * 4 for t in texts[:128]]
    options = _runtime_options(onnx_dir, chunk_texts, questions)
    result.data = {"ingestion": ingest, "retrieval": retrieval, "options": options, "size": size}
    _report(result, ingest, retrieval, options, size, len(questions))
    return result


def _report(
    result: BenchResult,
    ingest: dict[str, float],
    retrieval: dict[str, Any],
    options: list[list[Any]],
    size: int,
    questions: int,
) -> None:
    result.tables.append(
        Table(
            "Ingestion through KnowledgeService.ingest, chunks/s (same files, one tenant each)",
            ["torch", "ONNX", "ONNX / torch"],
            [[ingest["torch"], ingest["onnx"], ratio(ingest["onnx"], ingest["torch"])]],
        )
    )
    rows = []
    for name in ("torch", "onnx"):
        r, e = retrieval[name]["retrieve"], retrieval[name]["query_embedding"]
        rows.append([name, r["p50"], r["p95"], e["p50"], e["p95"]])
    result.tables.append(
        Table(
            f"Retrieval at {size:,} chunks, ms ({questions} questions; KnowledgeService.retrieve "
            "incl. query embedding; the query embedding alone beside it)",
            ["model", "retrieve p50", "retrieve p95", "query embedding p50", "query embedding p95"],
            rows,
        )
    )
    result.tables.append(
        Table(
            "ONNX runtime options: chunks/s on 128 chunk-sized texts, query embedding p95 (ms)",
            ["intra-op threads", "batch size", "chunks/s", "query p95 ms"],
            options,
        )
    )
    onnx_p95 = retrieval["onnx"]["retrieve"]["p95"]
    result.targets += [
        target(
            f"retrieval p95 at {size:,} chunks on ONNX (query embedding incl.)",
            onnx_p95,
            "ms",
            "<=",
            10,
        ),
        target(
            f"retrieval p95 at {size:,} chunks, ONNX / torch",
            ratio(onnx_p95, retrieval["torch"]["retrieve"]["p95"]),
            "x",
            "<=",
            0.4,
        ),
        target(
            "ingestion chunks/s, ONNX / torch",
            ratio(ingest["onnx"], ingest["torch"]),
            "x",
            ">=",
            2.0,
        ),
    ]
