"""Scale-out storage (issue 19): teams' vectors on a real Chroma server, originals in PostgreSQL.

Two "replicas" (KnowledgeServices on separate data dirs) share the run's `chroma run` server
(tests/fixtures/chroma_server.py) and a fresh PostgreSQL database, as two app replicas would.
Checked on the server with raw clients: each team has its own database and no other team's
vectors; the originals are rows of the database, encrypted, scoped by tenant, and any
replica re-indexes from them. The server stopped: typed errors, nothing half-written, and
all works again once it is back. The canary suite runs on the server too
(tests/test_rag_isolation.py is parametrized over both backends).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import chromadb
import numpy as np
import pytest
from chromadb.config import Settings as ChromaSettings
from sqlalchemy import select

from core.config import Settings
from core.db import session_scope, upgrade_database, utcnow
from core.errors import ConfigError, DocumentStoreUnavailable, IngestionError, NotFound
from core.knowledge.chroma_server import database_name
from core.knowledge.originals_sql import OriginalRow
from core.knowledge.service import KnowledgeService
from core.knowledge.vectorstore import COLLECTION_NAME
from core.plugins import load_tenants
from core.tenancy import Tenant, TenantRegistry
from tests.audit_helpers import pg_database
from tests.fixtures.chroma_server import ChromaServer, unique_chroma_tenant
from tests.knowledge_support import make_service, write

CHROMA_TENANT = unique_chroma_tenant()
MASTER_KEY = "chroma-server-test-master-key-0123456789"  # the same on every replica


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with pg_database("tlm_chroma") as url:
        yield url


def _replica(folder: Path, server: ChromaServer, db_url: str) -> KnowledgeService:
    return make_service(
        folder,
        chroma_url=server.url,
        chroma_tenant=CHROMA_TENANT,
        database_url=db_url,
        master_key=MASTER_KEY,
    )


@pytest.fixture(scope="module")
def replica_a(
    chroma_server: ChromaServer, pg_url: str, tmp_path_factory: pytest.TempPathFactory
) -> KnowledgeService:
    return _replica(tmp_path_factory.mktemp("replica-a"), chroma_server, pg_url)


@pytest.fixture(scope="module")
def finance_doc(
    replica_a: KnowledgeService, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str]:
    """(document id, canary) of one finance document uploaded through replica A."""
    canary = f"FIN-SRV-{uuid.uuid4().hex[:10].upper()}"
    text = f"The Halcyon escrow account number is {canary}, held by the treasury team."
    path = write(tmp_path_factory.mktemp("fin"), "escrow.txt", text)
    [outcome] = replica_a.ingest(replica_a.tenants.get("finance"), [path], "alice")
    assert outcome.status == "indexed", outcome.error
    assert outcome.document_id
    return outcome.document_id, canary


def _raw(server: ChromaServer, tenant_id: str) -> chromadb.Collection:
    client = chromadb.HttpClient(
        host="127.0.0.1", port=server.port, tenant=CHROMA_TENANT, database=database_name(tenant_id)
    )
    return client.get_collection(COLLECTION_NAME, embedding_function=None)


def _original_rows(db_url: str, tenant_id: str) -> dict[str, bytes]:
    with session_scope(db_url) as session:
        rows = session.scalars(select(OriginalRow).where(OriginalRow.tenant_id == tenant_id))
        return {r.document_id: bytes(r.blob) for r in rows}


def _state(service: KnowledgeService, tenant_id: str) -> tuple[set[str], set[str]]:
    """(registered document ids, stored original ids) of one tenant."""
    tenant = service.tenants.get(tenant_id)
    return {d.id for d in service.list_documents(tenant)}, service._files.original_ids(tenant)


def test_each_team_has_its_own_database_on_the_server(
    replica_a: KnowledgeService, finance_doc: tuple[str, str], chroma_server: ChromaServer
) -> None:
    doc_id, canary = finance_doc
    finance, sales = replica_a.tenants.get("finance"), replica_a.tenants.get("sales")
    sources = replica_a.retrieve(finance, "Halcyon escrow account number")
    assert any(canary in s.snippet and s.document_id == doc_id for s in sources)
    assert replica_a.retrieve(sales, f"Halcyon escrow account {canary}") == []

    stored = _raw(chroma_server, "finance").get()
    assert {m["tenant_id"] for m in stored["metadatas"] or []} == {"finance"}
    assert any(canary in d for d in stored["documents"] or [])
    # Sales' database exists (opened by its question above) and holds none of finance's.
    other = _raw(chroma_server, "sales").get()
    assert {m["tenant_id"] for m in other["metadatas"] or []} <= {"sales"}
    assert not any(canary in d for d in other["documents"] or [])
    admin = chromadb.AdminClient(
        ChromaSettings(
            chroma_api_impl="chromadb.api.fastapi.FastAPI",
            chroma_server_host="127.0.0.1",
            chroma_server_http_port=chroma_server.port,
        )
    )
    names = {d["name"] for d in admin.list_databases(tenant=CHROMA_TENANT)}
    assert {"team_finance", "team_sales"} <= names
    assert all(n.startswith("team_") for n in names)
    # Nothing fell back to an embedded store or to original files on this replica's disk.
    assert not (replica_a.tenant_dir(finance) / "chroma").exists()
    assert not (replica_a.tenant_dir(finance) / "files").exists()


def test_originals_are_encrypted_rows_and_any_replica_reindexes(
    replica_a: KnowledgeService,
    finance_doc: tuple[str, str],
    chroma_server: ChromaServer,
    pg_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    doc_id, canary = finance_doc
    rows = _original_rows(pg_url, "finance")
    assert set(rows) == {doc_id}
    assert canary.encode() not in rows[doc_id]  # encrypted at rest
    # Replica B: another data dir, the same database and server. It sees the document at
    # once and, with finance's vectors wiped on the server, rebuilds them from the row.
    replica_b = _replica(tmp_path_factory.mktemp("replica-b"), chroma_server, pg_url)
    finance = replica_b.tenants.get("finance")
    assert [d.id for d in replica_b.list_documents(finance)] == [doc_id]
    raw = _raw(chroma_server, "finance")
    raw.delete(ids=raw.get()["ids"])
    assert raw.count() == 0
    chunks = replica_b.reindex(finance)
    assert chunks >= 1 and raw.count() == chunks
    for replica in (replica_a, replica_b):
        found = replica.retrieve(replica.tenants.get("finance"), "Halcyon escrow account number")
        assert any(canary in s.snippet for s in found)
    assert not (replica_b.tenant_dir(finance) / "files").exists()


def test_a_document_uploaded_on_one_replica_is_found_by_keyword_on_another(
    replica_a: KnowledgeService,
    chroma_server: ChromaServer,
    pg_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # Each replica keeps its keyword index in its own data dir; B's is opened (and built)
    # before A's upload, and must follow the shared document set.
    replica_b = _replica(tmp_path_factory.mktemp("replica-b-keywords"), chroma_server, pg_url)
    sales_b = replica_b.tenants.get("sales")
    word = f"zq{uuid.uuid4().hex[:8]}"  # a token no embedding has seen: found by keyword only
    assert replica_b.retrieve(sales_b, word, keyword_weight=1.0) == []
    path = write(tmp_path_factory.mktemp("kw"), "codes.txt", f"The vault code word is {word}.")
    [outcome] = replica_a.ingest(replica_a.tenants.get("sales"), [path], "alice")
    assert outcome.status == "indexed", outcome.error
    found = replica_b.retrieve(sales_b, word, keyword_weight=1.0)
    assert [s.document_id for s in found] == [outcome.document_id]
    # B's own delete goes the other way: A no longer finds it by keyword.
    replica_b.delete_document(sales_b, outcome.document_id)
    assert replica_a.retrieve(replica_a.tenants.get("sales"), word, keyword_weight=1.0) == []


def test_store_read_and_delete_an_original_in_the_database(
    replica_a: KnowledgeService, pg_url: str, tmp_path: Path, chroma_server: ChromaServer
) -> None:
    sales = replica_a.tenants.get("sales")
    files = replica_a._files
    files.write_original(sales, "a" * 32, b"quarterly seat prices")
    assert files.read_original(sales, "a" * 32) == b"quarterly seat prices"
    files.remove_original(sales, "a" * 32)
    assert "a" * 32 not in _original_rows(pg_url, "sales")
    with pytest.raises(IngestionError, match="missing"):
        files.read_original(sales, "a" * 32)
    # Through the service: a deleted document's row, original and vectors all go.
    path = write(tmp_path, "seats.txt", "Seat prices rise four percent in the new plan.")
    [outcome] = replica_a.ingest(sales, [path], "bob")
    assert outcome.status == "indexed" and outcome.document_id
    assert outcome.document_id in _original_rows(pg_url, "sales")
    replica_a.delete_document(sales, outcome.document_id)
    assert outcome.document_id not in _original_rows(pg_url, "sales")
    remaining = _raw(chroma_server, "sales").get()["metadatas"] or []
    assert all(m.get("document_id") != outcome.document_id for m in remaining)


def test_team_b_cannot_read_team_a_original(
    replica_a: KnowledgeService, finance_doc: tuple[str, str], pg_url: str
) -> None:
    doc_id, _ = finance_doc
    sales, finance = replica_a.tenants.get("sales"), replica_a.tenants.get("finance")
    with pytest.raises(IngestionError, match="missing"):
        replica_a._files.read_original(sales, doc_id)
    assert doc_id not in replica_a._files.original_ids(sales)
    with pytest.raises(NotFound):
        replica_a.delete_document(sales, doc_id)
    assert doc_id in _original_rows(pg_url, "finance")  # untouched
    # Even the blob itself, copied under sales' id, opens nothing: sales' key, sales' binding.
    with session_scope(pg_url) as session:
        blob = _original_rows(pg_url, "finance")[doc_id]
        session.add(OriginalRow(tenant_id="sales", document_id=doc_id, blob=blob,
                                size=len(blob), stored_at=utcnow()))  # fmt: skip
    try:
        with pytest.raises(IngestionError, match="cannot be decrypted"):
            replica_a._files.read_original(sales, doc_id)
    finally:
        replica_a._files.remove_original(sales, doc_id)
    assert replica_a._files.read_original(finance, doc_id)  # finance still reads its own


def test_server_down_is_a_typed_error_nothing_is_half_written_and_it_recovers(
    replica_a: KnowledgeService,
    finance_doc: tuple[str, str],
    chroma_server: ChromaServer,
    pg_url: str,
    tmp_path: Path,
) -> None:
    doc_id, _ = finance_doc
    finance = replica_a.tenants.get("finance")
    # A replica that has opened no team's store yet: its first open meets the outage.
    cold = _replica(tmp_path / "cold", chroma_server, pg_url)
    path = write(tmp_path, "outage.txt", "The outage runbook: page the on-call treasurer.")
    before = _state(replica_a, "finance")
    chroma_server.stop()
    try:
        with pytest.raises(DocumentStoreUnavailable) as refused:
            replica_a.ingest(finance, [path], "alice")
        assert refused.value.status == 503 and "try again" in refused.value.message
        assert _state(replica_a, "finance") == before  # no registry row, no original row
        with pytest.raises(DocumentStoreUnavailable):
            replica_a.retrieve(finance, "outage runbook")
        with pytest.raises(DocumentStoreUnavailable):
            replica_a.delete_document(finance, doc_id)
        assert _state(replica_a, "finance") == before  # the delete changed nothing
        with pytest.raises(DocumentStoreUnavailable):
            cold.retrieve(cold.tenants.get("development"), "release checklist")
    finally:
        chroma_server.start()
    [outcome] = replica_a.ingest(finance, [path], "alice")
    assert outcome.status == "indexed", outcome.error
    sources = replica_a.retrieve(finance, "outage runbook on-call treasurer")
    assert any(s.document_id == outcome.document_id for s in sources)
    assert cold.retrieve(cold.tenants.get("development"), "release checklist") == []
    replica_a.delete_document(finance, str(outcome.document_id))


def test_a_team_with_its_own_server_url(chroma_server: ChromaServer, tmp_path: Path) -> None:
    """No server setting: only the team whose Tenant names a server keeps its vectors there."""
    settings = Settings(data_dir=tmp_path, chroma_tenant=unique_chroma_tenant())
    upgrade_database(settings.resolved_database_url)
    builtin = load_tenants(settings)
    sales = replace(builtin.get("sales"), chroma_url=chroma_server.url)
    registry = TenantRegistry([sales, *(t for t in builtin.all() if t.id != "sales")])
    service = KnowledgeService(settings, registry)
    for team in ("sales", "finance"):
        path = write(tmp_path, f"{team}.txt", f"The {team} team meets on Tuesdays.")
        [outcome] = service.ingest(registry.get(team), [path], "carol")
        assert outcome.status == "indexed", outcome.error
    client = chromadb.HttpClient(
        host="127.0.0.1",
        port=chroma_server.port,
        tenant=settings.chroma_tenant,
        database=database_name("sales"),
    )
    stored = client.get_collection(COLLECTION_NAME, embedding_function=None).get()
    assert {m["tenant_id"] for m in stored["metadatas"] or []} == {"sales"}
    assert not (service.tenant_dir(sales) / "chroma").exists()
    assert (service.tenant_dir(registry.get("finance")) / "chroma").exists()
    # SQLite: the originals stay files under the data dir.
    assert (service.tenant_dir(sales) / "files").exists()


def test_a_tenant_chroma_url_must_be_an_http_address() -> None:
    base = load_tenants(Settings()).get("sales")
    assert replace(base, chroma_url="https://chroma.internal:8443").problems() == []
    for bad in ("chroma.internal:8000", "file:///etc/passwd", "http://", ""):
        assert any("chroma_url" in p for p in replace(base, chroma_url=bad).problems()), bad
    assert isinstance(base, Tenant)


def test_a_database_holding_another_teams_collection_is_refused(
    chroma_server: ChromaServer, tmp_path: Path
) -> None:
    """Sales' database made by hand with finance's collection in it: sales never uses it."""
    chroma_tenant = unique_chroma_tenant()
    admin = chromadb.AdminClient(
        ChromaSettings(
            chroma_api_impl="chromadb.api.fastapi.FastAPI",
            chroma_server_host="127.0.0.1",
            chroma_server_http_port=chroma_server.port,
        )
    )
    admin.create_tenant(chroma_tenant)
    admin.create_database(database_name("sales"), tenant=chroma_tenant)
    client = chromadb.HttpClient(
        host="127.0.0.1",
        port=chroma_server.port,
        tenant=chroma_tenant,
        database=database_name("sales"),
    )
    planted = client.create_collection(
        COLLECTION_NAME, embedding_function=None, metadata={"tenant_id": "finance"}
    )
    planted.add(ids=["x"], embeddings=np.zeros((1, 384), dtype=np.float32), documents=["stray"])
    service = make_service(tmp_path, chroma_url=chroma_server.url, chroma_tenant=chroma_tenant)
    with pytest.raises(ConfigError, match="refusing"):
        service.retrieve(service.tenants.get("sales"), "stray")
