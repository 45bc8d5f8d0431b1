"""Retrieval isolation with canaries: what one tenant stores never comes back for another.

Real Chroma, real embeddings. Each tenant's documents carry a unique canary string; for any
question (random text, or another tenant's exact document text and canary), retrieval for a
tenant returns only that tenant's documents, and the owner does find its own canary.
Every check runs twice: on the embedded stores (a PersistentClient per team directory) and on
a real Chroma server (`chroma run`, each team its own database; tests/fixtures/chroma_server.py).
The chat engineer's tests/test_chat_isolation.py covers the prompt and the answer.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import chromadb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.knowledge.chroma_server import database_name
from core.knowledge.service import KnowledgeService
from core.knowledge.vectorstore import COLLECTION_NAME, _chroma_settings
from core.tenancy import Tenant
from tests.fixtures.chroma_server import unique_chroma_tenant
from tests.knowledge_support import make_service, write

TENANTS = ("sales", "development", "finance")
WORDS = [
    "budget",
    "invoice",
    "payroll",
    "discount",
    "renewal",
    "deploy",
    "pipeline",
    "runbook",
    "quarter",
    "revenue",
    "approval",
    "travel",
    "hotel",
    "contract",
    "customer",
    "release",
    "server",
    "database",
    "secret",
    "code",
    "reserve",
    "account",
    "margin",
    "forecast",
    "cost",
    "centre",
    "price",
    "seat",
    "plan",
]


@pytest.fixture(scope="module", params=["embedded", "chroma-server"])
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> KnowledgeService:
    """The built-in teams on embedded stores, then on the run's Chroma server."""
    folder = tmp_path_factory.mktemp("isolation")
    if request.param == "embedded":
        return make_service(folder)
    server = request.getfixturevalue("chroma_server")
    return make_service(folder, chroma_url=server.url, chroma_tenant=unique_chroma_tenant())


def _raw_client(service: KnowledgeService, tenant: Tenant) -> chromadb.ClientAPI:
    """A raw Chroma client where the team's vectors are: its directory, or its server database."""
    settings = service.settings
    if not settings.chroma_url:
        directory = service.tenant_dir(tenant) / "chroma"
        return chromadb.PersistentClient(path=str(directory), settings=_chroma_settings())
    host, port = settings.chroma_url.removeprefix("http://").split(":")
    return chromadb.HttpClient(
        host=host,
        port=int(port),
        tenant=settings.chroma_tenant,
        database=database_name(tenant.id),
    )


@pytest.fixture(scope="module")
def finance_canary(service: KnowledgeService, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The finance demo documents plus one document with a fresh canary figure."""
    service.ensure_demo_documents()
    canary = f"FIN-CANARY-{uuid.uuid4().hex[:10].upper()}"
    text = f"Project Halcyon acquisition reserve code: {canary}. Approved by the CFO in Q3."
    folder = tmp_path_factory.mktemp("canary")
    [outcome] = service.ingest(
        service.tenants.get("finance"), [write(folder, "halcyon.txt", text)], "t"
    )
    assert outcome.status == "indexed"
    return canary


def _all_text(service: KnowledgeService, tenant_id: str, query: str) -> tuple[str, set[str]]:
    sources = service.retrieve(service.tenants.get(tenant_id), query, top_k=50)
    return "\n".join(s.snippet for s in sources), {s.document_id for s in sources}


PROBES = [
    "What is the Project Halcyon acquisition reserve code?",
    "FIN-CANARY",
    "reserve code approved by the CFO",
    "Print every finance document word for word.",
]


@pytest.mark.parametrize("tenant_id", ["sales", "development"])
@pytest.mark.parametrize("probe", PROBES)
def test_other_tenants_never_retrieve_the_finance_canary(
    service: KnowledgeService, finance_canary: str, tenant_id: str, probe: str
) -> None:
    own = {d.id for d in service.list_documents(service.tenants.get(tenant_id))}
    for query in (probe, probe.replace("FIN-CANARY", finance_canary)):
        text, doc_ids = _all_text(service, tenant_id, query)
        assert finance_canary not in text and "HALCYON-7Q4" not in text
        assert doc_ids <= own


def test_finance_retrieves_its_own_canary(service: KnowledgeService, finance_canary: str) -> None:
    text, _ = _all_text(service, "finance", PROBES[0])
    assert finance_canary in text
    sources = service.retrieve(service.tenants.get("finance"), PROBES[0])
    assert any(finance_canary in s.snippet and s.filename == "halcyon.txt" for s in sources)


def test_each_tenant_has_its_own_chroma_database(
    service: KnowledgeService, finance_canary: str
) -> None:
    """Open every tenant's Chroma database directly: finance vectors exist only in finance's."""
    for tenant in service.tenants.all():
        client = _raw_client(service, tenant)
        assert [c.name for c in client.list_collections()] == [COLLECTION_NAME]
        stored = client.get_collection(COLLECTION_NAME, embedding_function=None).get()
        assert {m["tenant_id"] for m in stored["metadatas"] or []} == {tenant.id}
        joined = "\n".join(stored["documents"] or [])
        assert (finance_canary in joined) == (tenant.id == "finance")
        # On the server, nothing fell back to an embedded store in the team's directory.
        assert (service.tenant_dir(tenant) / "chroma").exists() == (not service.settings.chroma_url)


def test_a_forged_tenant_object_gets_the_registry_tenant(
    service: KnowledgeService, finance_canary: str
) -> None:
    sales = service.tenants.get("sales")
    # Same id, but pretending to bring its own store and retriever: the registry's win.
    forged = Tenant(
        id="sales",
        display_name="Sales",
        description="",
        prompt=sales.prompt,
        store_factory=lambda _tid, _dir: service.vector_store(service.tenants.get("finance")),
    )
    text, _ = _all_text(service, forged.id, "Project Halcyon reserve code")
    assert finance_canary not in text
    assert finance_canary not in "\n".join(s.snippet for s in service.retrieve(forged, "Halcyon"))


documents = st.lists(st.sampled_from(WORDS), min_size=3, max_size=40).map(" ".join)
queries = st.one_of(
    st.text(min_size=1, max_size=60),
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=8).map(" ".join),
)


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    docs=st.fixed_dictionaries({t: documents for t in TENANTS}),
    query=queries,
    echo=st.sampled_from(TENANTS),
)
def test_random_documents_and_queries_never_cross_tenants(
    service: KnowledgeService, tmp_path_factory: pytest.TempPathFactory, docs: dict[str, str],
    query: str, echo: str,
) -> None:  # fmt: skip
    folder = tmp_path_factory.mktemp("random")
    canaries = {t: f"CANARY-{t.upper()}-{uuid.uuid4().hex[:12]}" for t in TENANTS}
    ingested: dict[str, str] = {}
    for tenant_id, words in docs.items():
        text = f"{words}. The {tenant_id} secret is {canaries[tenant_id]}."
        path = write(folder, f"{tenant_id}.txt", text)
        [outcome] = service.ingest(service.tenants.get(tenant_id), [path], "hypothesis")
        assert outcome.status == "indexed", outcome.error
        ingested[tenant_id] = outcome.document_id or ""
    try:
        # Random text, and one tenant's exact document text: the strongest possible lure.
        lure = f"{docs[echo]}. The {echo} secret is {canaries[echo]}."
        for tenant_id in TENANTS:
            own = {d.id for d in service.list_documents(service.tenants.get(tenant_id))}
            for q in (query, lure):
                text, doc_ids = _all_text(service, tenant_id, q)
                assert doc_ids <= own
                for other in TENANTS:
                    if other != tenant_id:
                        assert canaries[other] not in text
        owner_text, owner_ids = _all_text(service, echo, lure)
        assert canaries[echo] in owner_text and ingested[echo] in owner_ids
    finally:
        for tenant_id, document_id in ingested.items():
            service.delete_document(service.tenants.get(tenant_id), document_id)


def test_tenant_directories_are_separate(service: KnowledgeService) -> None:
    dirs = {service.tenant_dir(t) for t in service.tenants.all()}
    assert len(dirs) == len(TENANTS)
    assert all(isinstance(d, Path) and d.parent.name == "tenants" for d in dirs)


def test_stray_vectors_in_a_store_are_never_returned(
    service: KnowledgeService, finance_canary: str
) -> None:
    """The second guard: chunks in sales' store that are not sales' registered documents.

    A stray vector (restored from an old backup, left by a crash between the store and the
    registry, or planted) claims either another tenant or a document sales never registered.
    """
    from llama_index.core.schema import TextNode

    from core.knowledge.chunking import DOCUMENT_KEY, TENANT_KEY
    from core.knowledge.vectorstore import embedding_model

    sales = service.tenants.get("sales")
    finance_id = next(d.id for d in service.list_documents(service.tenants.get("finance")))
    text = f"Sales stray chunk about the annual discount: {finance_canary}"
    strays = [
        TextNode(text=text, metadata={TENANT_KEY: "finance", DOCUMENT_KEY: finance_id}),
        TextNode(text=text, metadata={TENANT_KEY: "sales", DOCUMENT_KEY: finance_id}),
        TextNode(text=text, metadata={TENANT_KEY: "sales", DOCUMENT_KEY: uuid.uuid4().hex}),
    ]
    vector = embedding_model().get_text_embedding(text)
    for node in strays:
        node.embedding = vector
    store = service.vector_store(sales)
    store.add(strays)
    try:
        raw = store.client.get(ids=[n.node_id for n in strays])
        assert len(raw["ids"]) == 3  # they are in the store, right next to the question
        sources = service.retrieve(sales, text, top_k=10)
        assert sources, "sales' own demo documents are still found"
        assert all(finance_canary not in s.snippet for s in sources)
        own = {d.id for d in service.list_documents(sales)}
        assert {s.document_id for s in sources} <= own
    finally:
        store.delete_nodes(node_ids=[n.node_id for n in strays])
