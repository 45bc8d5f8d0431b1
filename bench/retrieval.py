"""Ingestion speed vs raw embedding speed, and retrieval latency at ~10k chunks in one tenant.

    .venv/bin/python -m bench.retrieval [--chunks 10000] [--queries 200]

Everything is real: files go through `KnowledgeService.ingest` (checks, sandboxed parse,
SentenceSplitter, MiniLM embeddings, Chroma, encrypted original, registry row); the raw
baseline is `SentenceTransformer.encode` on exactly the chunk texts ingestion produced,
same model folder and batch size. Retrieval goes through `KnowledgeService.retrieve`
(query embedding included). Small chunks (64 tokens) make 10k chunks affordable on 2 cores.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

_WORD_TEXT = (
    "revenue pipeline churn quarter forecast invoice budget margin customer contract renewal "
    "deployment service latency release incident database cluster migration security audit "
    "policy expense travel payroll vendor compliance report region growth pricing discount"
)
WORDS = _WORD_TEXT.split()
WORDS_PER_PARAGRAPH = 45
PARAGRAPHS_PER_FILE = 250


def _write_corpus(folder: Path, chunks: int, rng: random.Random) -> list[Path]:
    files = []
    for number in range(max(1, chunks // PARAGRAPHS_PER_FILE)):
        paragraphs = [
            " ".join(rng.choice(WORDS) for _ in range(WORDS_PER_PARAGRAPH)).capitalize() + "."
            for _ in range(PARAGRAPHS_PER_FILE)
        ]
        path = folder / f"doc-{number:04d}.txt"
        path.write_text("\n\n".join(paragraphs))
        files.append(path)
    return files


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def main() -> None:
    """Run the measurements and print a small report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer

    from core.config import Settings
    from core.db import upgrade_database
    from core.knowledge import KnowledgeService
    from core.plugins import load_tenants
    from core.vectorstore import EMBED_BATCH_SIZE, EMBEDDING_MODEL_DIR, embedding_model

    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as scratch:
        settings = Settings(data_dir=Path(scratch) / "data", chunk_size=64, chunk_overlap=0)
        upgrade_database(settings.resolved_database_url)
        service = KnowledgeService(settings, load_tenants(settings))
        tenant = service.tenants.get("development")
        files = _write_corpus(Path(scratch), args.chunks, rng)
        embedding_model().get_text_embedding("warm up")  # model load is not ingestion

        started = time.perf_counter()
        outcomes = service.ingest(tenant, files, "bench")
        ingest_s = time.perf_counter() - started
        total = sum(o.chunks for o in outcomes)
        assert all(o.status == "indexed" for o in outcomes), outcomes

        texts = [n.get_content() for n in service._index(tenant).vector_store.get_nodes(None)]
        raw = SentenceTransformer(str(EMBEDDING_MODEL_DIR), device="cpu")
        started = time.perf_counter()
        raw.encode(texts, batch_size=EMBED_BATCH_SIZE)
        encode_s = time.perf_counter() - started

        latencies = []
        for _ in range(args.queries):
            query = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10)))
            started = time.perf_counter()
            service.retrieve(tenant, query)
            latencies.append((time.perf_counter() - started) * 1000)

    print(f"files: {len(files)}, chunks: {total} (chunk_size 64 tokens)")
    print(f"ingestion: {total / ingest_s:,.0f} chunks/s ({ingest_s:.1f} s, everything included)")
    print(f"raw SentenceTransformer.encode, same chunks: {len(texts) / encode_s:,.0f} chunks/s")
    print(
        f"retrieval at {total} chunks, {args.queries} queries, top_k {settings.top_k}: "
        f"p50 {statistics.median(latencies):.1f} ms, p95 {_percentile(latencies, 95):.1f} ms"
    )


if __name__ == "__main__":
    main()
