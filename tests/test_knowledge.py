"""Knowledge: every file type ingests with real locations, duplicates, delete, re-index,
encryption at rest, the demo documents and the CLI, with real Chroma and real embeddings."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from core import crypto
from core.config import Settings
from core.errors import ConfigError, IngestionError, NotFound
from core.knowledge.demo import demo_docs_dir
from core.knowledge.service import KnowledgeService
from core.knowledge.vectorstore import delete_nodes
from tests.knowledge_support import make_docx, make_pdf, make_service, stored_state, write

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> KnowledgeService:
    return make_service(tmp_path_factory.mktemp("knowledge"))


FILE_TYPES = {
    "notes.txt": ("Our fastest build agent is called pelican-nine.", "pelican-nine", "part 1"),
    "guide.md": (
        "# Intro\nWelcome.\n\n## Build agents\nOur fastest build agent is called kestrel-four.\n",
        "kestrel-four",
        "section: Build agents",
    ),
    "page.html": (
        "<html><body><h1>Home</h1><p>Hi</p><h2>Agents</h2>"
        "<p>Our fastest build agent is called osprey-two.</p>"
        "<script>var x=1</script></body></html>",
        "osprey-two",
        "section: Agents",
    ),
    "agents.csv": (
        "agent,speed\nslow-one,3\nheron-seven,9\n",
        "heron-seven",
        "rows 2-3",
    ),
}


@pytest.mark.parametrize("name", sorted(FILE_TYPES))
def test_text_file_types_ingest_and_retrieve_with_location(
    service: KnowledgeService, tmp_path: Path, name: str
) -> None:
    content, marker, location = FILE_TYPES[name]
    tenant = service.tenants.get("development")
    [outcome] = service.ingest(tenant, [write(tmp_path, name, content)], "tester")
    assert outcome.status == "indexed" and outcome.chunks >= 1, outcome.error
    sources = service.retrieve(tenant, f"what is {marker}?", top_k=10)
    hit = [s for s in sources if marker in s.snippet]
    assert hit and hit[0].filename == name and hit[0].location == location
    assert "<script>" not in hit[0].snippet and "var x" not in hit[0].snippet
    service.delete_document(tenant, outcome.document_id)


def test_pdf_pages_are_cited_by_page(service: KnowledgeService, tmp_path: Path) -> None:
    tenant = service.tenants.get("development")
    pdf = make_pdf(
        [["Cover page of the handbook."], ["The staging database is called amber-lake."]]
    )
    [outcome] = service.ingest(tenant, [write(tmp_path, "handbook.pdf", pdf)], "tester")
    assert outcome.status == "indexed", outcome.error
    sources = service.retrieve(tenant, "name of the staging database", top_k=10)
    hit = [s for s in sources if "amber-lake" in s.snippet]
    assert hit and hit[0].location == "page 2" and hit[0].filename == "handbook.pdf"
    service.delete_document(tenant, outcome.document_id)


def test_docx_ingests(service: KnowledgeService, tmp_path: Path) -> None:
    tenant = service.tenants.get("development")
    data = make_docx(["Release notes", "The release train leaves every second Tuesday."])
    [outcome] = service.ingest(tenant, [write(tmp_path, "notes.docx", data)], "tester")
    assert outcome.status == "indexed", outcome.error
    sources = service.retrieve(tenant, "when does the release train leave?")
    assert any("second Tuesday" in s.snippet and s.location == "part 1" for s in sources)
    service.delete_document(tenant, outcome.document_id)


def test_same_content_twice_is_one_document(service: KnowledgeService, tmp_path: Path) -> None:
    tenant = service.tenants.get("sales")
    first = write(tmp_path, "a.txt", "Gold partners get a dedicated manager.")
    second = write(tmp_path, "copy-of-a.txt", "Gold partners get a dedicated manager.")
    [one] = service.ingest(tenant, [first], "tester")
    before = stored_state(service, "sales")
    [two] = service.ingest(tenant, [second], "someone else")
    assert one.status == "indexed" and two.status == "duplicate"
    assert two.document_id == one.document_id and two.chunks == one.chunks
    assert stored_state(service, "sales") == before
    # The same content in another tenant is that tenant's own, separate document.
    [other] = service.ingest(service.tenants.get("finance"), [second], "tester")
    assert other.status == "indexed" and other.document_id != one.document_id
    service.delete_document(tenant, one.document_id)
    service.delete_document(service.tenants.get("finance"), other.document_id)


def test_delete_removes_every_chunk_and_the_original(
    service: KnowledgeService, tmp_path: Path
) -> None:
    tenant = service.tenants.get("sales")
    long_text = "\n\n".join(
        f"Clause {i}: the walrus-{i} discount code expires at the end of month {i}." * 8
        for i in range(12)
    )
    [outcome] = service.ingest(tenant, [write(tmp_path, "codes.txt", long_text)], "tester")
    assert outcome.status == "indexed" and outcome.chunks > 1
    assert any("walrus" in s.snippet for s in service.retrieve(tenant, "walrus discount code"))
    before = stored_state(service, "sales")

    service.delete_document(tenant, outcome.document_id)

    rows, vectors, files = stored_state(service, "sales")
    assert (rows, vectors, files) == (before[0] - 1, before[1] - outcome.chunks, before[2] - 1)
    assert not any("walrus" in s.snippet for s in service.retrieve(tenant, "walrus code", 50))
    with pytest.raises(NotFound):
        service.delete_document(tenant, outcome.document_id)


def test_delete_of_another_tenants_document_is_not_found(
    service: KnowledgeService, tmp_path: Path
) -> None:
    finance = service.tenants.get("finance")
    [outcome] = service.ingest(
        finance, [write(tmp_path, "f.txt", "Payroll runs on the 25th.")], "t"
    )
    with pytest.raises(NotFound):
        service.delete_document(service.tenants.get("sales"), outcome.document_id)
    assert any("Payroll" in s.snippet for s in service.retrieve(finance, "when is payroll"))
    service.delete_document(finance, outcome.document_id)


def test_originals_are_encrypted_at_rest_and_bound_to_their_tenant(
    service: KnowledgeService, tmp_path: Path
) -> None:
    secret = "The vault combination is 31-07-1999-ORCA."
    finance = service.tenants.get("finance")
    [outcome] = service.ingest(finance, [write(tmp_path, "vault.txt", secret)], "tester")
    stored = service._files.original_path(finance, outcome.document_id).read_bytes()
    assert b"ORCA" not in stored and b"vault" not in stored
    assert service._files.read_original(finance, outcome.document_id).decode() == secret
    # Another tenant's key (or the same blob under another tenant) does not open it.
    sales_key = crypto.tenant_key(crypto.master_key(service.settings), "sales")
    with pytest.raises(IngestionError):
        crypto.decrypt(sales_key, "sales", outcome.document_id, stored)
    key_file = service.settings.data_dir / crypto.MASTER_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    service.delete_document(finance, outcome.document_id)


def test_production_without_master_key_refuses_to_start(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, mode="production", secret_key="x" * 40, master_key="")
    with pytest.raises(ConfigError, match="MASTER_KEY"):
        crypto.master_key(settings)


def test_reindex_rebuilds_from_stored_originals(service: KnowledgeService, tmp_path: Path) -> None:
    tenant = service.tenants.get("development")
    [outcome] = service.ingest(
        tenant, [write(tmp_path, "oncall.md", "# On-call\nThe pager rotates on Mondays.")], "t"
    )
    delete_nodes(service.vector_store(tenant), None)  # only the originals remain:
    service.keyword_index(tenant).replace([])  # no vectors, no keyword index
    assert not service.retrieve(tenant, "when does the pager rotate")
    chunks = service.reindex(tenant)
    assert chunks == sum(d.chunks for d in service.list_documents(tenant)) >= 1
    assert any(
        "Mondays" in s.snippet for s in service.retrieve(tenant, "when does the pager rotate")
    )
    service.delete_document(tenant, outcome.document_id)


def test_demo_documents_are_ingested_once(tmp_path: Path) -> None:
    service = make_service(tmp_path)
    service.ensure_demo_documents()
    counts = {t.id: len(service.list_documents(t)) for t in service.tenants.all()}
    expected = {t: len(list((demo_docs_dir() / t).iterdir())) for t in counts}
    assert counts == expected and all(counts.values())
    service.ensure_demo_documents()
    assert {t.id: len(service.list_documents(t)) for t in service.tenants.all()} == counts
    sales = service.retrieve(service.tenants.get("sales"), "How much does the Team plan cost?")
    assert sales and all(s.filename in os.listdir(demo_docs_dir() / "sales") for s in sales)


def test_open_stores_opens_each_tenant_and_survives_a_broken_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Startup opens every store (no slow first question); one broken store spoils nothing."""
    from dataclasses import replace

    from core.tenancy import TenantRegistry

    def broken_store(tenant_id: str, directory: Path) -> object:
        raise OSError("disk gone")

    base = make_service(tmp_path)
    sales = replace(base.tenants.get("sales"), store_factory=broken_store)
    others = [t for t in base.tenants.all() if t.id != "sales"]
    service = KnowledgeService(base.settings, TenantRegistry([sales, *others]))
    service.open_stores()
    assert service._indexes.opened() == {t.id for t in others}
    assert "document store of sales could not be opened" in caplog.text
    finance = service.tenants.get("finance")
    [outcome] = service.ingest(finance, [write(tmp_path, "q.txt", "Quarter close is day 5.")], "t")
    assert outcome.status == "indexed"
    assert service.retrieve(finance, "When is quarter close?")


def test_cli_ingest_docs_rm_reindex(tmp_path: Path) -> None:
    env = {**os.environ, "TENANTLLM_DATA_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "core.cli", *args],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
        )  # fmt: skip

    good = write(tmp_path, "rules.md", "# Rules\nCode freeze starts on 20 December.")
    bad = write(tmp_path, "bad.exe", b"MZ")
    result = cli("ingest", "--tenant", "development", str(good), str(bad), "--json")
    assert result.returncode == 1, result.stderr  # one file refused
    outcomes = json.loads(result.stdout)
    assert [o["status"] for o in outcomes] == ["indexed", "refused"]
    docs = json.loads(cli("docs", "--tenant", "development", "--json").stdout)
    assert [d["filename"] for d in docs] == ["rules.md"] and docs[0]["uploaded_by"].startswith(
        "local:"
    )
    assert json.loads(cli("reindex", "--tenant", "development", "--json").stdout)["chunks"] >= 1
    wrong = cli("rm", "--tenant", "sales", docs[0]["id"])
    assert wrong.returncode == 1 and "No document" in wrong.stderr
    assert cli("rm", "--tenant", "development", docs[0]["id"]).returncode == 0
    assert json.loads(cli("docs", "--tenant", "development", "--json").stdout) == []
    unknown = cli("docs", "--tenant", "nope")
    assert unknown.returncode == 1 and "No tenant" in unknown.stderr
