"""Benchmark 4: retrieval latency by store size, tenant independence, and ingestion speed.

Everything goes through `core.knowledge.service.KnowledgeService` on a scratch data dir, beside raw
baselines measured in the same run:

* Ingestion: real text files through `KnowledgeService.ingest` (sandboxed parse, split,
  embed, Chroma, encrypted original, registry row) vs `SentenceTransformer.encode` alone on
  exactly the chunk texts that ingestion produced (same model folder, same batch size).
* Retrieval: `KnowledgeService.retrieve` (query embedding included) vs a raw Chroma HNSW
  query with a precomputed query vector, and vs raw encode + raw query.
  Embedding 100k chunks for real would take far longer than the whole suite may, so the big
  stores are filled with precomputed vectors: real MiniLM embeddings of a base set of
  sentences, duplicated with small Gaussian noise and re-normalised, added through the same
  llama-index `ChromaVectorStore.add` the product uses (5,000 per call: Chroma's batch cap),
  with registry rows for their documents so that retrieval returns them.
* Ten tenants: one tenant of 10k is measured alone, then again while nine other tenants of
  10k each exist and are queried in between (their stores are copies of the first one's
  folder, made with a file copy to save time; each is its own Chroma client like any tenant).
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path
from typing import Any

from bench.common import BenchContext, BenchResult, Table, ratio, summarize, target

_WORD_TEXT = (
    "revenue pipeline churn quarter forecast invoice budget margin customer contract renewal "
    "deployment service latency release incident database cluster migration security audit "
    "policy expense travel payroll vendor compliance report region growth pricing discount "
    "roadmap feature backlog review meeting account partner support ticket escalation"
)
WORDS = _WORD_TEXT.split()
CHROMA_MAX_BATCH = 5000  # Chroma 1.5 refuses more than 5,461 records per add
DOCS_PER_TENANT = 20


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def _paragraphs(rng: random.Random, words: int) -> str:
    out, count = [], 0
    while count < words:
        sentence = _sentence(rng, rng.randint(8, 20))
        out.append(sentence)
        count += len(sentence.split())
    return " ".join(out)


def _tenants(ids: list[str]) -> Any:
    from core.tenancy import PromptTemplate, Tenant, TenantRegistry

    prompt = PromptTemplate(system="You help the bench team.")
    return TenantRegistry([Tenant(i, i, "bench tenant", prompt) for i in ids])


# --- ingestion ---------------------------------------------------------------------------
def _write_docs(folder: Path, files: int, words: int, seed: int) -> list[Path]:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(files):
        path = folder / f"report-{i:02d}.txt"
        path.write_text("\n\n".join(_paragraphs(rng, 200) for _ in range(words // 200)))
        paths.append(path)
    return paths


def _raw_encode_rate(model: Any, texts: list[str]) -> float:
    from core.knowledge.vectorstore import EMBED_BATCH_SIZE

    started = time.perf_counter()
    model.encode(texts, batch_size=EMBED_BATCH_SIZE)
    return len(texts) / (time.perf_counter() - started)


def _ingestion(
    ks: Any, tenant: Any, model: Any, paths: list[Path], warm_up: Path
) -> dict[str, Any]:
    """Chunks/s of our ingestion vs raw encode of the same chunk texts (two raw runs after).

    A warm-up file is ingested first, unmeasured: the first batches of a new shape pay
    one-time costs in torch, and without it they fell on our side only.
    """
    from core.knowledge import parsing
    from core.knowledge.chunking import DOCUMENT_KEY
    from core.knowledge.vectorstore import chroma_store

    parsing.start_parser()  # as the app does at startup; its 2-4 s are not ingestion
    ks.ingest(tenant, [warm_up], "bench")
    started = time.perf_counter()
    outcomes = ks.ingest(tenant, paths, "bench")
    ours_s = time.perf_counter() - started
    chunks = sum(o.chunks for o in outcomes)
    store = chroma_store(tenant.id, ks.tenant_dir(tenant) / "chroma")
    measured = {"$in": [o.document_id for o in outcomes]}
    got = store.client.get(where={DOCUMENT_KEY: measured}, include=["documents"])
    texts = list(got["documents"])
    assert len(texts) == chunks, (len(texts), chunks)
    raw = [_raw_encode_rate(model, texts), _raw_encode_rate(model, texts)]
    raw_rate = sum(raw) / len(raw)
    return {
        "files": len(paths),
        "chunks": chunks,
        "ours_chunks_per_s": chunks / ours_s,
        "raw_encode_chunks_per_s": raw_rate,
        "raw_runs": raw,
        "ratio": ratio(chunks / ours_s, raw_rate),
        "statuses": sorted({o.status for o in outcomes}),
    }


# --- synthetic big stores ------------------------------------------------------------------
def _base_vectors(model: Any, n: int, seed: int) -> tuple[list[str], Any]:
    rng = random.Random(seed)
    texts = [_sentence(rng, rng.randint(12, 40)) for _ in range(n)]
    return texts, model.encode(texts, batch_size=64, normalize_embeddings=True)


def _fill(ks: Any, tenant: Any, n: int, base: tuple[list[str], Any], seed: int) -> float:
    """Put n noisy copies of the base vectors in the tenant's store; registry rows for them."""
    import numpy as np
    from llama_index.core.schema import TextNode

    from core.db import session_scope, utcnow
    from core.knowledge import documents
    from core.knowledge.chunking import DOCUMENT_KEY, FILENAME_KEY, LOCATION_KEY, TENANT_KEY

    texts, vectors = base
    rng = np.random.default_rng(seed)
    doc_ids = [f"{tenant.id}{i:04d}".ljust(32, "0")[:32] for i in range(DOCS_PER_TENANT)]
    store = ks.vector_store(tenant)  # the tenant's own store, as the product opens it
    started = time.perf_counter()
    for offset in range(0, n, CHROMA_MAX_BATCH):
        size = min(CHROMA_MAX_BATCH, n - offset)
        pick = rng.integers(0, len(texts), size)
        batch = vectors[pick] + rng.normal(0, 0.04, (size, vectors.shape[1])).astype("float32")
        batch /= np.linalg.norm(batch, axis=1, keepdims=True)
        nodes = [
            TextNode(
                id_=f"{tenant.id}-{offset + j}",
                text=texts[pick[j]],
                embedding=batch[j].tolist(),
                metadata={
                    TENANT_KEY: tenant.id,
                    DOCUMENT_KEY: doc_ids[(offset + j) % len(doc_ids)],
                    FILENAME_KEY: "synthetic.txt",
                    LOCATION_KEY: f"part {offset + j}",
                },
            )
            for j in range(size)
        ]
        store.add(nodes)
    with session_scope(ks.settings.resolved_database_url) as session:
        for i, doc_id in enumerate(doc_ids):
            session.add(
                documents.DocumentRow(
                    id=doc_id,
                    tenant_id=tenant.id,
                    filename="synthetic.txt",
                    sha256=f"{i:064x}",
                    size=0,
                    chunks=n // len(doc_ids),
                    uploaded_by="bench",
                    uploaded_at=utcnow(),
                )
            )
    return time.perf_counter() - started


def _questions(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return [
        f"What does the {rng.choice(WORDS)} report say about {rng.choice(WORDS)} "
        f"and {rng.choice(WORDS)}?"
        for _ in range(n)
    ]


def _measure(
    ks: Any, tenant: Any, model: Any, questions: list[str], others: list[Any] | None = None
) -> dict[str, Any]:
    """p50/p95 of ours, raw HNSW and raw encode+query for the tenant (others queried between)."""
    from core.knowledge.vectorstore import chroma_store

    collection = chroma_store(tenant.id, ks.tenant_dir(tenant) / "chroma").client
    k = ks.settings.top_k
    vectors = model.encode(questions, batch_size=64)
    for q in questions[:5]:  # warm up: load the index, the model, the connections
        ks.retrieve(tenant, q)
    ours, raw, raw_full, returned = [], [], [], 0
    for i, q in enumerate(questions):
        for other in others or []:
            ks.retrieve(other, q)
        t0 = time.perf_counter()
        returned += len(ks.retrieve(tenant, q))
        t1 = time.perf_counter()
        collection.query(query_embeddings=[vectors[i].tolist()], n_results=k)
        t2 = time.perf_counter()
        collection.query(query_embeddings=[model.encode(q).tolist()], n_results=k)
        t3 = time.perf_counter()
        ours.append((t1 - t0) * 1000)
        raw.append((t2 - t1) * 1000)
        raw_full.append((t3 - t2) * 1000)
    return {
        "ours": summarize(ours),
        "raw_hnsw": summarize(raw),
        "raw_encode_query": summarize(raw_full),
        "mean_sources": returned / len(questions),
    }


def _copy_store(ks: Any, source: Any, dest: Any) -> None:
    """Give `dest` a copy of `source`'s Chroma folder (its own client, its own index files).

    The copy keeps the source's tenant id in its chunk metadata, so retrieve's tenant guard
    returns no sources for it: these tenants exist to hold data and be queried in between.
    """
    target_dir = ks.tenant_dir(dest) / "chroma"
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ks.tenant_dir(source) / "chroma", target_dir)


def _stats_row(label: str, chunks: int, m: dict[str, Any]) -> list[Any]:
    ours, raw, full = m["ours"], m["raw_hnsw"], m["raw_encode_query"]
    return [
        label,
        chunks,
        ours["p50"],
        ours["p95"],
        raw["p50"],
        raw["p95"],
        full["p95"],
        ours["p95"] - full["p95"],
        m["mean_sources"],
    ]


def _big_size(ctx: BenchContext, rate: float) -> int:
    """The biggest store (100k) or what can be filled in the time budget left, in 10k steps.

    Keeps 90 s for the rest of this benchmark and the report.
    """
    wanted = ctx.scale(100_000, 3_000)
    allowance = min(240.0, ctx.remaining() - 90.0)  # 90 s: its queries, ten tenants, report
    step = ctx.scale(10_000, 1_000)
    fits = int(rate * allowance) // step * step
    return max(0, min(wanted, fits))


def _setup(ctx: BenchContext, others: int) -> tuple[Any, Any]:
    from sentence_transformers import SentenceTransformer

    from core.config import Settings
    from core.db import upgrade_database
    from core.knowledge.service import KnowledgeService
    from core.knowledge.vectorstore import EMBEDDING_MODEL_DIR

    work = ctx.subdir("retrieval")
    ids = ["ingest", "small", "ten", "big"] + [f"other{i}" for i in range(others)]
    settings = Settings(data_dir=work / "data")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_database(settings.resolved_database_url)
    model = SentenceTransformer(str(EMBEDDING_MODEL_DIR), device="cpu")
    return KnowledgeService(settings, _tenants(ids)), model


def _by_size(ctx: BenchContext, ks: Any, model: Any, questions: list[str]) -> dict[str, Any]:
    """Fill and measure the 1k and 10k stores, then the biggest one that fits the budget."""
    base = _base_vectors(model, ctx.scale(2_000, 200), ctx.seed)
    sizes: dict[str, int] = {"small": ctx.scale(1_000, 200), "ten": ctx.scale(10_000, 1_000)}
    fills: dict[str, float] = {}
    measured: dict[str, dict[str, Any]] = {}
    for name in ("small", "ten", "big"):
        if name == "big":
            sizes["big"] = _big_size(ctx, sizes["ten"] / fills["ten"])
            if not sizes["big"]:
                break
        tenant = ks.tenants.get(name)
        fills[name] = _fill(ks, tenant, sizes[name], base, ctx.seed + sizes[name])
        measured[name] = _measure(ks, tenant, model, questions)
    wanted = ctx.scale(100_000, 3_000)
    return {
        "sizes": sizes,
        "fills": fills,
        "measured": measured,
        "base": len(base[0]),
        "wanted_big": wanted,
    }


def _ten_tenants(ks: Any, model: Any, questions: list[str], others: int) -> dict[str, Any]:
    ten = ks.tenants.get("ten")
    for i in range(others):
        _copy_store(ks, ten, ks.tenants.get(f"other{i}"))
    alone = _measure(ks, ten, model, questions)
    # Every question also queries the 9 others: a third of the questions keeps it affordable.
    crowd = _measure(
        ks,
        ten,
        model,
        questions[: max(10, len(questions) // 3)],
        others=[ks.tenants.get(f"other{i}") for i in range(others)],
    )
    return {
        "alone": alone,
        "with_others": crowd,
        "others": others,
        "p95_ratio": ratio(crowd["ours"]["p95"], alone["ours"]["p95"]),
    }


def run(ctx: BenchContext) -> BenchResult:
    """Ingestion vs raw encode; retrieval p50/p95 by store size and with ten tenants."""
    result = BenchResult("retrieval", "4. Retrieval and ingestion")
    others = ctx.scale(9, 2)
    ks, model = _setup(ctx, others)
    folder, words = ctx.subdir("retrieval"), ctx.scale(12_000, 2_000)
    docs = _write_docs(folder / "docs", ctx.scale(6, 2), words, ctx.seed)
    warm_up = _write_docs(folder / "warm-up", 1, words, ctx.seed + 1)[0]
    warm_up = warm_up.rename(warm_up.with_name("warm-up.txt"))  # not a new version of a doc
    ingest = _ingestion(ks, ks.tenants.get("ingest"), model, docs, warm_up)
    questions = _questions(ctx.seed, ctx.scale(100, 20))
    stores = _by_size(ctx, ks, model, questions)
    crowd = _ten_tenants(ks, model, questions, others)
    result.data = {"ingestion": ingest, "stores": stores, "ten_tenants": crowd}
    _report(result, ks, ingest, stores, crowd, len(questions))
    return result


def _report(
    result: BenchResult,
    ks: Any,
    ingest: dict[str, Any],
    stores: dict[str, Any],
    crowd: dict[str, Any],
    questions: int,
) -> None:
    sizes, measured, fills = stores["sizes"], stores["measured"], stores["fills"]
    ten, others = sizes["ten"], crowd["others"]
    result.tables.append(
        Table(
            "Ingestion: chunks/s through KnowledgeService.ingest vs SentenceTransformer.encode "
            "on the same chunk texts (raw: mean of two runs after ours; a warm-up file first)",
            ["files", "chunks", "ours chunks/s", "raw encode chunks/s", "ours / raw"],
            [
                [
                    ingest["files"],
                    ingest["chunks"],
                    ingest["ours_chunks_per_s"],
                    ingest["raw_encode_chunks_per_s"],
                    ingest["ratio"],
                ]
            ],
        )
    )
    rows = [_stats_row(f"{sizes[k]:,} chunks", sizes[k], measured[k]) for k in measured]
    rows.append(_stats_row(f"{ten:,} alone (again)", ten, crowd["alone"]))
    rows.append(
        _stats_row(f"{ten:,} + {others} other tenants x {ten:,}", ten, crowd["with_others"])
    )
    result.tables.append(
        Table(
            f"Retrieval latency, ms (top_k={ks.settings.top_k}, {questions} questions; ours = "
            "KnowledgeService.retrieve incl. query embedding; raw HNSW = Chroma query with a "
            "precomputed vector; raw encode+query = SentenceTransformer.encode + Chroma query)",
            [
                "store",
                "chunks",
                "ours p50",
                "ours p95",
                "raw HNSW p50",
                "raw HNSW p95",
                "raw encode+query p95",
                "ours - raw encode+query p95",
                "sources returned",
            ],
            rows,
        )
    )
    result.notes.append(
        "Stores were filled with precomputed vectors ("
        + f"{stores['base']:,}"
        + " real MiniLM embeddings duplicated with noise) through ChromaVectorStore.add: "
        + ", ".join(f"{sizes[k]:,} in {fills[k]:.0f} s" for k in fills)
        + f". The {others} other tenants' stores are file copies of the {ten:,}-chunk store."
    )
    if sizes.get("big", 0) < stores["wanted_big"]:
        result.notes.append(
            f"The biggest store has {sizes.get('big', 0):,} chunks, not "
            f"{stores['wanted_big']:,}: that is what "
            "fitted in the suite's 20-minute budget at the fill rate measured in this run."
        )
    result.targets += [
        target(
            f"retrieval p95 at {ten:,} chunks (query embedding included)",
            measured["ten"]["ours"]["p95"],
            "ms",
            "<=",
            15,
        ),
        target("ingestion chunks/s vs raw encode", ingest["ratio"], "x", ">=", 0.8),
        target(
            f"tenant p95 with {others} other tenants / alone", crowd["p95_ratio"], "x", "<=", 1.2
        ),
    ]
