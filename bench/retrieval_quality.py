"""Benchmark: retrieval quality on real documents, dense vs BM25 vs hybrid.

The set is `../shared/eval/sec-10-q/` (beside the repository, never copied into it): 20
quarterly reports (SEC 10-Q PDFs, 1,037 pages) and 195 questions labelled with the
documents that answer them (`Source Docs`, a glob such as `*2023 Q3 AAPL*` or `*AAPL*`),
a question type (single-doc single-chunk, single-doc multi-chunk, multi-doc) and the kind
of passage (table or text). Relevance is per document: a retrieved passage counts if its
file matches the question's glob (the set gives no page or chunk positions).

Everything goes through `KnowledgeService` on a scratch data dir, one team holding all 20
reports: ingestion as an upload does it (sandboxed parse, chunk, embed, Chroma, BM25,
registry), then every question through `retrieve` three ways, by the keyword weight alone:
0 (dense only, the tenant's retriever), 1 (BM25 only) and the product's setting (hybrid).
A quick run ingests only the six reports the nine questions of `qna_data_mini.csv` need.
"""

from __future__ import annotations

import csv
import fnmatch
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import REPO, BenchContext, BenchResult, Table, target

SET_DIR = REPO.parent / "shared" / "eval" / "sec-10-q"
K = 5
SWEEP = (0.0, 0.2, 0.35, 0.5, 0.65, 0.8, 1.0)  # keyword weights of the tuning table
TENANT_ID = "tenq"


@dataclass(frozen=True)
class Question:
    """One labelled question of the 10-Q set."""

    text: str
    pattern: str  # glob over the PDF file names
    kind: str  # Question Type
    chunk: str  # Source Chunk Type


def load_questions(path: Path) -> list[Question]:
    """The questions of a qna CSV (UTF-8 with a byte-order mark, quoted newlines)."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return [
            Question(r["Question"], r["Source Docs"], r["Question Type"], r["Source Chunk Type"])
            for r in csv.DictReader(handle)
        ]


def first_hit(pattern: str, filenames: list[str]) -> int | None:
    """1-based rank of the first passage whose file matches `pattern`, if any."""
    return next(
        (rank for rank, name in enumerate(filenames, start=1) if fnmatch.fnmatch(name, pattern)),
        None,
    )


def _needed_pdfs(questions: list[Question]) -> list[Path]:
    pdfs = sorted((SET_DIR / "docs").glob("*.pdf"))
    return [p for p in pdfs if any(fnmatch.fnmatch(p.name, q.pattern) for q in questions)]


def _service(ctx: BenchContext) -> Any:
    from core.config import Settings
    from core.db import upgrade_database
    from core.knowledge.service import KnowledgeService
    from core.tenancy import PromptTemplate, Tenant, TenantRegistry

    settings = Settings(data_dir=ctx.subdir("retrieval-quality") / "data")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_database(settings.resolved_database_url)
    tenant = Tenant(TENANT_ID, "10-Q", "quarterly reports", PromptTemplate(system="You help."))
    return KnowledgeService(settings, TenantRegistry([tenant]))


def _ingest(ks: Any, pdfs: list[Path]) -> dict[str, Any]:
    """Ingest the reports one call each; time, chunks, and the BM25 rebuild of the whole set."""
    from core.knowledge import parsing

    parsing.start_parser()  # as the app does at startup; its seconds are not ingestion
    tenant = ks.tenants.get(TENANT_ID)
    started = time.perf_counter()
    outcomes = [o for pdf in pdfs for o in ks.ingest(tenant, [pdf], "bench")]
    seconds = time.perf_counter() - started
    refused = [f"{o.filename}: {o.error}" for o in outcomes if o.status == "refused"]
    nodes = ks.vector_store(tenant).get_nodes(None)
    rebuild_started = time.perf_counter()
    ks.keyword_index(tenant).replace(nodes)
    chunks = sum(o.chunks for o in outcomes)
    return {
        "files": len(pdfs),
        "chunks": chunks,
        "seconds": seconds,
        "chunks_per_s": chunks / seconds if seconds else 0.0,
        "bm25_full_rebuild_s": time.perf_counter() - rebuild_started,
        "refused": refused,
    }


def _ranks(ks: Any, questions: list[Question], weight: float | None) -> list[int | None]:
    tenant = ks.tenants.get(TENANT_ID)
    ranks = []
    for q in questions:
        sources = ks.retrieve(tenant, q.text, K, keyword_weight=weight)
        ranks.append(first_hit(q.pattern, [s.filename for s in sources]))
    return ranks


def _scores(ranks: list[int | None]) -> dict[str, float]:
    n = len(ranks) or 1
    return {
        "hit": sum(r is not None for r in ranks) / n,
        "mrr": sum(1.0 / r for r in ranks if r) / n,
    }


def _by_group(
    questions: list[Question], ranks: dict[str, list[int | None]]
) -> dict[str, dict[str, dict[str, float]]]:
    """Scores of each mode for all questions, each question type and each chunk type."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, q in enumerate(questions):
        for name in ("all", q.kind, f"{q.chunk} source"):
            groups[name].append(i)
    return {
        group: {mode: _scores([r[i] for i in idx]) | {"n": len(idx)} for mode, r in ranks.items()}
        for group, idx in groups.items()
    }


def run(ctx: BenchContext) -> BenchResult:
    """Ingest the 10-Q reports into one team; hit@5 and MRR of dense, BM25 and hybrid."""
    result = BenchResult("quality", "Retrieval quality on real documents (SEC 10-Q)")
    csv_name = "qna_data_mini.csv" if ctx.quick else "qna_data.csv"
    if not (SET_DIR / csv_name).is_file():
        result.notes.append(f"Skipped: {SET_DIR / csv_name} is not there (../shared/eval/).")
        return result
    questions = load_questions(SET_DIR / csv_name)
    ks = _service(ctx)
    ingest = _ingest(ks, _needed_pdfs(questions))
    hybrid_weight = ks.settings.retrieval_keyword_weight
    modes = {"dense": 0.0, "bm25": 1.0, "hybrid": None}
    timed: dict[str, float] = {}
    ranks: dict[str, list[int | None]] = {}
    for mode, weight in modes.items():
        started = time.perf_counter()
        ranks[mode] = _ranks(ks, questions, weight)
        timed[mode] = (time.perf_counter() - started) * 1000 / len(questions)
    groups = _by_group(questions, ranks)
    sweep = {w: _scores(_ranks(ks, questions, w)) for w in SWEEP if w not in (0.0, 1.0)}
    result.data = {"set": csv_name, "ingestion": ingest, "groups": groups, "ms_per_query": timed}
    result.data |= {"hybrid_keyword_weight": hybrid_weight, "weight_sweep": sweep}
    _report(result, csv_name, ingest, groups, timed, hybrid_weight)
    result.tables.append(
        Table(
            f"All questions by keyword weight (0 = dense only, 1 = BM25 only), hit@{K} and MRR",
            ["keyword weight", f"hit@{K}", "MRR"],
            [[0.0, groups["all"]["dense"]["hit"], groups["all"]["dense"]["mrr"]]]
            + [[w, sc["hit"], sc["mrr"]] for w, sc in sweep.items()]
            + [[1.0, groups["all"]["bm25"]["hit"], groups["all"]["bm25"]["mrr"]]],
        )
    )
    return result


def _report(
    result: BenchResult,
    csv_name: str,
    ingest: dict[str, Any],
    groups: dict[str, dict[str, dict[str, float]]],
    timed: dict[str, float],
    weight: float,
) -> None:
    rows = []
    for group, modes in groups.items():
        d, b, h = modes["dense"], modes["bm25"], modes["hybrid"]
        rows.append([group, d["n"], d["hit"], b["hit"], h["hit"], h["hit"] - d["hit"],
                     d["mrr"], b["mrr"], h["mrr"]])  # fmt: skip
    result.tables.append(
        Table(
            f"hit@{K} and MRR@{K} by question type ({csv_name}; relevance per document: a "
            f"passage of a file matching the question's Source Docs; hybrid = RRF with keyword "
            f"weight {weight})",
            [
                "questions",
                "n",
                "dense hit@5",
                "BM25 hit@5",
                "hybrid hit@5",
                "hybrid - dense",
                "dense MRR",
                "BM25 MRR",
                "hybrid MRR",
            ],
            rows,
        )
    )
    result.tables.append(
        Table(
            "Ingestion through KnowledgeService.ingest (one call per PDF; parse, chunk, embed, "
            "Chroma, BM25 rebuilt after each file) and retrieval time per question",
            [
                "files",
                "chunks",
                "ingest s",
                "chunks/s",
                "BM25 rebuild of all chunks s",
                "dense ms/q",
                "BM25 ms/q",
                "hybrid ms/q",
            ],
            [
                [
                    ingest["files"],
                    ingest["chunks"],
                    ingest["seconds"],
                    ingest["chunks_per_s"],
                    ingest["bm25_full_rebuild_s"],
                    timed["dense"],
                    timed["bm25"],
                    timed["hybrid"],
                ]
            ],
        )
    )
    if ingest["refused"]:
        result.notes.append("Refused at ingestion: " + "; ".join(ingest["refused"]))
    overall = groups["all"]
    result.targets.append(
        target(
            f"hybrid hit@{K} minus dense hit@{K}, all questions ({csv_name})",
            overall["hybrid"]["hit"] - overall["dense"]["hit"],
            "",
            ">",
            0.0,
        )
    )
