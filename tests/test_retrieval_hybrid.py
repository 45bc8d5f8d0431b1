"""Hybrid retrieval: BM25 per team beside the vectors, fused by reciprocal rank fusion.

The keyword index is tested on its own (plain nodes, no model), then through
KnowledgeService with real Chroma and real embeddings: kept in step with uploads, deletes
and re-indexing, rebuilt from the vectors for a data dir that predates it, and isolated (a
keyword unique to finance never surfaces for sales, and its index files live only under
finance's directory).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.schema import NodeWithScore, TextNode

from core.errors import InvalidRequest
from core.knowledge.chunking import DOCUMENT_KEY, FILENAME_KEY, LOCATION_KEY, TENANT_KEY
from core.knowledge.keyword import CURRENT, KeywordIndex
from core.knowledge.retrieval import fuse
from core.knowledge.service import KnowledgeService
from core.knowledge.vectorstore import default_retriever
from core.tenancy import PromptTemplate, Tenant, TenantRegistry
from tests.knowledge_support import make_service, write

CANARY = "zorblax4471"  # one token, in no dictionary: only BM25 can match it exactly
FINANCE_DOC = (
    f"Treasury memo. The reserve account code is {CANARY}. It is used only for the year-end close."
)
SALES_DOC = "Sales playbook. Quote the list price first; discounts need approval."


def _node(tenant: str, doc: str, n: int, text: str) -> TextNode:
    meta = {TENANT_KEY: tenant, DOCUMENT_KEY: doc, FILENAME_KEY: f"{doc}.txt", LOCATION_KEY: ""}
    return TextNode(id_=f"{doc}-{n}", text=text, metadata=meta)


# --- the keyword index alone -------------------------------------------------------------
def test_keyword_index_add_search_remove_and_reload(tmp_path: Path) -> None:
    index = KeywordIndex("finance", tmp_path / "bm25")
    assert not index.exists() and index.search("anything", 5) == []
    index.add(
        [_node("finance", "a", 1, "Hotels cost EUR 160."), _node("finance", "a", 2, "Trains.")]
    )
    index.add([_node("finance", "b", 1, "The travel policies apply to everyone.")])
    # Stemming: "policy" finds "policies"; stop words alone find nothing.
    assert [r.node.node_id for r in index.search("travel policy", 5)] == ["b-1"]
    assert index.search("the of and", 5) == []
    assert index.search(CANARY, 5) == []

    reopened = KeywordIndex("finance", tmp_path / "bm25")  # what a restart (or the CLI) sees
    assert len(reopened) == 3
    assert reopened.search("hotels", 5)[0].node.metadata[DOCUMENT_KEY] == "a"

    index.remove_document("a")
    assert len(index) == 1 and index.search("hotels", 5) == []
    # The other instance reloads the newer generation on its next read.
    assert reopened.search("hotels", 5) == [] and len(reopened) == 1
    generations = [p for p in (tmp_path / "bm25").iterdir() if p.is_dir()]
    assert len(generations) <= 2  # old generations are cleaned up


def test_keyword_index_refuses_another_tenants_chunks(tmp_path: Path) -> None:
    index = KeywordIndex("sales", tmp_path / "bm25")
    with pytest.raises(ValueError):
        index.add([_node("finance", "x", 1, "finance text")])
    index.replace([_node("finance", "x", 1, "finance text"), _node("sales", "y", 1, "sales text")])
    assert len(index) == 1 and index.search("finance", 5) == []


def test_rrf_fuses_by_rank_with_weights() -> None:
    a, b, c = (NodeWithScore(node=TextNode(id_=i, text=i), score=s) for i, s in
               (("a", 0.9), ("b", 0.8), ("c", 30.0)))  # fmt: skip
    dense, keyword = [a, b], [c, b]
    # Equal weights: b is in both rankings and wins; raw scores (30.0) do not matter.
    assert [r.node.node_id for r in fuse([(0.5, dense), (0.5, keyword)], 60)][0] == "b"
    # Mostly keyword: c (keyword rank 1) beats a (dense rank 1).
    order = [r.node.node_id for r in fuse([(0.2, dense), (0.8, keyword)], 60)]
    assert order.index("c") < order.index("a")
    # Weight 0 on a ranking: its nodes still appear but score nothing from it.
    scores = {r.node.node_id: r.score for r in fuse([(1.0, dense), (0.0, keyword)], 60)}
    assert scores["c"] == 0.0 and scores["a"] > scores["b"] > 0


# --- through KnowledgeService: real Chroma, real embeddings ------------------------------
@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> KnowledgeService:
    root = tmp_path_factory.mktemp("hybrid")
    ks = make_service(root / "data")
    finance, sales = ks.tenants.get("finance"), ks.tenants.get("sales")
    [f] = ks.ingest(finance, [write(root, "treasury.txt", FINANCE_DOC)], "test")
    [s] = ks.ingest(sales, [write(root, "playbook.txt", SALES_DOC)], "test")
    assert f.status == s.status == "indexed"
    return ks


def test_a_keyword_unique_to_finance_never_surfaces_for_sales(service: KnowledgeService) -> None:
    finance, sales = service.tenants.get("finance"), service.tenants.get("sales")
    for weight in (None, 0.0, 0.5, 1.0):
        got = service.retrieve(sales, f"What is {CANARY}?", 10, keyword_weight=weight)
        assert all(s.filename == "playbook.txt" for s in got)
        assert all(CANARY not in s.snippet for s in got)
    assert service.keyword_index(sales).search(CANARY, 50) == []
    # The owner finds it by keyword, first.
    [top, *_] = service.retrieve(finance, CANARY, 3, keyword_weight=1.0)
    assert top.filename == "treasury.txt" and CANARY in top.snippet
    hits = service.keyword_index(finance).search(CANARY, 50)
    assert hits and all(h.node.metadata[TENANT_KEY] == "finance" for h in hits)


def test_keyword_index_files_live_only_under_the_teams_dir(service: KnowledgeService) -> None:
    finance = service.tenants.get("finance")
    finance_dir = service.tenant_dir(finance)
    assert (finance_dir / "bm25" / CURRENT).is_file()
    holders = [
        path
        for path in service.settings.data_dir.rglob("*")
        if path.is_file() and CANARY.encode() in path.read_bytes()
    ]
    assert holders, "the canary should be stored somewhere"
    assert all(finance_dir in path.parents for path in holders), holders
    assert any(path.name == "chunks.jsonl" for path in holders)  # the BM25 copy is there


def test_upload_delete_and_reindex_keep_bm25_in_step(tmp_path: Path) -> None:
    ks = make_service(tmp_path / "data")
    dev = ks.tenants.get("development")
    [one] = ks.ingest(dev, [write(tmp_path, "one.md", "Deploys use deployctl quuxrelease.")], "t")
    [two] = ks.ingest(dev, [write(tmp_path, "two.md", "Rollbacks take two minutes.")], "t")
    keywords = ks.keyword_index(dev)
    assert len(keywords) == one.chunks + two.chunks
    found = ks.retrieve(dev, "quuxrelease", 1, keyword_weight=1.0)
    assert [s.filename for s in found] == ["one.md"]

    assert ks.reindex(dev) == len(keywords)
    assert one.document_id is not None
    ks.delete_document(dev, one.document_id)
    assert len(keywords) == two.chunks
    assert ks.retrieve(dev, "quuxrelease", 5, keyword_weight=1.0) == []
    assert all(s.filename == "two.md" for s in ks.retrieve(dev, "quuxrelease deployctl", 5))


def test_a_data_dir_without_bm25_is_backfilled_from_the_vectors(tmp_path: Path) -> None:
    ks = make_service(tmp_path / "data")
    sales = ks.tenants.get("sales")
    [doc] = ks.ingest(sales, [write(tmp_path, "faq.txt", "Trials last 30 days, plinkcode.")], "t")
    shutil.rmtree(ks.tenant_dir(sales) / "bm25")  # as before hybrid retrieval existed

    fresh = KnowledgeService(ks.settings, ks.tenants)
    assert len(fresh.keyword_index(sales)) == doc.chunks
    [top] = fresh.retrieve(sales, "plinkcode", 1, keyword_weight=1.0)
    assert top.filename == "faq.txt"


def test_a_plugins_retriever_is_still_the_dense_side(tmp_path: Path) -> None:
    calls: list[int] = []

    def spy(index: Any, top_k: int) -> Any:
        calls.append(top_k)
        return default_retriever(index, top_k)

    prompt = PromptTemplate(system="You help.")
    own = Tenant("legal", "Legal", "contracts", prompt, retriever_factory=spy)
    alone = Tenant("audit", "Audit", "no BM25", prompt, retriever_factory=spy, keyword_weight=0.0)
    base = make_service(tmp_path / "data")
    ks = KnowledgeService(base.settings, TenantRegistry([own, alone]))
    for tenant in (own, alone):
        text = "Clause 7 limits liability to the fees paid in twelve months. " * 3
        ks.ingest(tenant, [write(tmp_path, f"{tenant.id}.txt", text)], "t")
    calls.clear()
    assert ks.retrieve(own, "liability cap", 2)
    assert calls and calls[-1] >= 2  # the plugin's retriever ran, fused with BM25
    calls.clear()
    assert ks.retrieve(alone, "liability cap", 2)
    assert calls == [2]  # weight 0: the plugin's retriever alone, exactly top_k


def test_keyword_weight_is_checked(tmp_path: Path) -> None:
    prompt = PromptTemplate(system="You help.")
    assert "keyword_weight must be between 0 and 1" in " ".join(
        Tenant("legal", "Legal", "x", prompt, keyword_weight=1.5).problems()
    )
    ks = make_service(tmp_path / "data")
    sales = ks.tenants.get("sales")
    with pytest.raises(InvalidRequest):
        ks.retrieve(sales, "price", keyword_weight=2.0)
    assert replace(sales, keyword_weight=0.3).problems() == []


def test_the_app_never_loads_llvmlite() -> None:
    """bm25s would import numba (installed by vLLM), whose llvmlite crashes vLLM's CPU worker
    start in the same process; core.knowledge.keyword hides numba while bm25s loads."""
    import subprocess
    import sys

    probe = (
        "import sys, core.server, core.knowledge.keyword;"
        "print(sorted(m for m in ('numba', 'llvmlite') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
