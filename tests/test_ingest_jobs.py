"""Background indexing jobs (issue 18, item 5): real Chroma, real embeddings, real parsers.

One job per file, rows in SQL (SQLite here; the claim race on PostgreSQL too), progress a
person can read (file k of n, pages parsed, chunks embedded), failures that say why and leave
nothing stored, jobs of a stopped process resumed or failed after a restart, and jobs that
belong to their team only.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from core.config import Settings
from core.db import session_scope, upgrade_database, utcnow
from core.knowledge import jobs
from core.knowledge.chunking import build_nodes
from core.knowledge.ingest_worker import LOST_COPY, SERVER_FAILURE, STOPPED_TWICE, IngestJobs
from core.knowledge.job_staging import StagedRow
from core.knowledge.jobs import JobInfo
from core.knowledge.parsing import Part
from core.services import Services, build_services
from tests.audit_helpers import pg_database
from tests.knowledge_support import make_pdf, stored_state, write

PAGES = [[f"Page {n} of the travel policy: rule {n} says zebra{n} trips need approval."] * 30
         for n in range(1, 4)]  # fmt: skip


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """Real services (no engine) on one data dir for the module; the worker is not started."""
    data_dir = tmp_path_factory.mktemp("jobs")
    built = build_services(Settings(data_dir=data_dir, chunk_size=64, chunk_overlap=8))
    try:
        yield built
    finally:
        built.ingest_jobs.stop()
        built.auditor.close()


def _files(tmp_path: Path, tag: str) -> list[Path]:
    pdf = write(tmp_path, f"policy-{tag}.pdf", make_pdf([[f"{tag} {line}" for line in page]
                                                           for page in PAGES]))  # fmt: skip
    csv = "city,cost\n" + "".join(f"{tag}town{n},{n * 10}\n" for n in range(60))
    return [pdf, write(tmp_path, f"costs-{tag}.csv", csv), write(tmp_path, f"{tag}.exe", b"MZ")]


def _wait_idle(services: Services, tenant_id: str, deadline_s: float = 300) -> list[JobInfo]:
    tenant = services.tenants.get(tenant_id)
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        listed = services.ingest_jobs.list_jobs(tenant)
        if not any(j.active for j in listed):
            return listed
        time.sleep(0.2)
    raise AssertionError(f"jobs still active: {services.ingest_jobs.list_jobs(tenant)}")


def test_uploads_are_indexed_in_the_background_one_job_per_file(services, tmp_path) -> None:
    sales = services.tenants.get("sales")
    before = stored_state(services.knowledge, "sales")
    queued = services.ingest_jobs.enqueue(
        sales, _files(tmp_path, "bg"), ["policy-bg.pdf", "costs-bg.csv", "bg.exe"],
        "ann@example.com", "ann",
    )  # fmt: skip
    # Queued at once, numbered in the batch; the refused file says why without any parse.
    assert [(j.position, j.batch_size, j.state) for j in queued] == [
        (1, 3, "queued"), (2, 3, "queued"), (3, 3, "failed")]  # fmt: skip
    assert "type .exe is not accepted" in (queued[2].error or "")
    services.ingest_jobs.start()
    done = {
        j.filename: j for j in _wait_idle(services, "sales") if j.batch_id == queued[0].batch_id
    }
    pdf, csv = done["policy-bg.pdf"], done["costs-bg.csv"]
    assert (pdf.state, pdf.pages, csv.state, csv.pages) == ("indexed", 3, "indexed", 3)
    docs = {d.filename: d for d in services.knowledge.list_documents(sales)}
    assert pdf.document_id == docs["policy-bg.pdf"].id
    assert pdf.chunks_done == pdf.chunks_expected == docs["policy-bg.pdf"].chunks > 3
    rows, vectors, files = stored_state(services.knowledge, "sales")
    assert rows == before[0] + 2 and files == before[2] + 2
    # Indexed means answerable: the PDF's own words find it.
    found = services.knowledge.retrieve(sales, "zebra2 trips approval")
    assert found and found[0].filename == "policy-bg.pdf"
    # The staged (encrypted) copies are gone once indexed.
    assert list((services.knowledge.tenant_dir(sales) / "queue").glob("*.bin")) == []


def test_progress_is_written_step_by_step(services, tmp_path) -> None:
    sales = services.tenants.get("sales")
    services.ingest_jobs.stop()  # this test runs its job itself, as the CLI does
    [path] = _files(tmp_path, "steps")[:1]
    [job] = services.ingest_jobs.enqueue(
        sales, [path], [path.name], "ann@example.com", "ann", keep_for_me=True
    )
    seen: list[JobInfo] = []
    finished = services.ingest_jobs.run_job(sales, job.id, seen.append)
    assert finished is not None and finished.state == "indexed", finished
    steps = [s.step for s in seen]
    assert steps[0] == "embedding" and "storing" in steps and seen[-1].state == "indexed"
    assert seen[0].pages == 3
    embedded = [s.chunks_done for s in seen]
    assert embedded == sorted(embedded) and embedded[-1] == finished.chunks_done
    # The count to embed is known before embedding ends (the bar has a total).
    assert any(s.step == "embedding" and s.chunks_expected == finished.chunks_done for s in seen)
    fractions = [s.fraction_done() for s in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_a_failed_job_says_why_and_stores_nothing(services, tmp_path, monkeypatch) -> None:
    finance = services.tenants.get("finance")
    before = stored_state(services.knowledge, "finance")
    broken = write(tmp_path, "broken.pdf", b"%PDF-1.4\n1 0 obj <<>> trailer garbage")
    [path] = _files(tmp_path, "fails")[:1]
    keyword = services.knowledge.keyword_index(finance)

    def refuse(nodes: Any) -> None:  # a unit isolated: the keyword store fails mid-write
        raise RuntimeError("disk full")

    monkeypatch.setattr(keyword, "add", refuse)
    queued = services.ingest_jobs.enqueue(
        finance, [broken, path], ["broken.pdf", path.name], "fay@example.com", "fay",
        keep_for_me=True,
    )  # fmt: skip
    results = [services.ingest_jobs.run_job(finance, j.id) for j in queued]
    assert [r.state for r in results if r] == ["failed", "failed"]
    assert "broken.pdf: the file could not be read" in (results[0].error or "")
    assert results[1].error == f"{path.name}: {SERVER_FAILURE}"
    # The vectors written before the keyword store failed were removed with everything else.
    assert stored_state(services.knowledge, "finance") == before


def _stopped_job(services: Services, tmp_path: Path, tag: str, worker: str, **row: Any) -> str:
    """A job of sales left `running` by a process that stopped (its row as that one left it)."""
    sales = services.tenants.get("sales")
    path = write(tmp_path, f"{tag}.txt", f"The {tag} handbook: {tag} rules apply.")
    [job] = services.ingest_jobs.enqueue(sales, [path], [path.name], "ann", "ann", keep_for_me=True)
    with session_scope(services.settings.resolved_database_url) as session:
        stored = jobs.get_job(session, "sales", job.id)
        assert stored is not None
        stored.state, stored.step, stored.worker, stored.attempts = "running", "storing", worker, 1
        stored.heartbeat_at = utcnow() - timedelta(hours=1)
        for key, value in row.items():
            setattr(stored, key, value)
    return job.id


def test_jobs_of_a_stopped_process_resume_or_fail_with_the_reason(services, tmp_path) -> None:
    services.ingest_jobs.stop()
    sales = services.tenants.get("sales")
    store = services.knowledge.vector_store(sales)
    # Stopped mid-store: its vectors are in Chroma, its registry row never written.
    half = build_nodes("sales", "f" * 32, "half.txt", [Part("half written text", "")], 64, 8)
    store.add(half)
    resumed = _stopped_job(services, tmp_path, "resumed", "elsewhere:1:gone", document_id="f" * 32)
    twice = _stopped_job(services, tmp_path, "twice", "elsewhere:1:gone", attempts=2)
    lost = _stopped_job(services, tmp_path, "lost", "elsewhere:1:gone")
    (services.knowledge.tenant_dir(sales) / "queue" / f"{lost}.bin").unlink()
    # On this host, a process that is gone is known at once (no heartbeat wait).
    host = services.ingest_jobs.worker_id.split(":")[0]
    gone_here = _stopped_job(
        services, tmp_path, "gonehere", f"{host}:999999999:x", heartbeat_at=utcnow()
    )
    # A live worker's job elsewhere with a fresh heartbeat is left alone.
    alive = _stopped_job(services, tmp_path, "alive", "elsewhere:1:live", heartbeat_at=utcnow())

    restarted = IngestJobs(services.settings, services.knowledge, services.auditor)
    assert restarted.recover() == 4
    assert store.get_nodes(None, filters=None) and not [
        n for n in store.get_nodes(None) if n.metadata.get("tenantllm_document_id") == "f" * 32
    ]
    restarted.run_pending()
    by_id = {j.id: j for j in services.ingest_jobs.list_jobs(sales, limit=200)}
    assert by_id[resumed].state == by_id[gone_here].state == "indexed"
    assert by_id[twice].state == "failed" and by_id[twice].error == f"twice.txt: {STOPPED_TWICE}"
    assert by_id[lost].state == "failed" and by_id[lost].error == f"lost.txt: {LOST_COPY}"
    assert by_id[alive].state == "running"
    found = services.knowledge.retrieve(sales, "resumed handbook rules")
    assert any(s.filename == "resumed.txt" for s in found)


def test_jobs_are_listed_and_read_for_their_own_team_only(services, tmp_path) -> None:
    sales, finance = services.tenants.get("sales"), services.tenants.get("finance")
    path = write(tmp_path, "fincanaryjob.txt", "finance only")
    [fin_job] = services.ingest_jobs.enqueue(finance, [path], [path.name], "fay", "fay")
    listed_sales = services.ingest_jobs.list_jobs(sales, limit=500)
    listed_fin = services.ingest_jobs.list_jobs(finance, limit=500)
    assert fin_job.id in {j.id for j in listed_fin}
    assert {j.tenant_id for j in listed_sales} == {"sales"}
    assert "fincanaryjob.txt" not in {j.filename for j in listed_sales}
    with session_scope(services.settings.resolved_database_url) as session:
        assert jobs.get_job(session, "sales", fin_job.id) is None
    # Another team's job cannot be run through this team either.
    assert services.ingest_jobs.run_job(sales, fin_job.id) is None


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_two_workers_never_claim_one_job(kind: str, tmp_path: Path) -> None:
    def claims(url: str) -> None:
        upgrade_database(url)
        with session_scope(url) as session:
            new = [jobs.NewJob(f"{kind[:2]}{n:030d}", f"f{n}.txt", 1) for n in range(6)]
            jobs.add_batch(session, "sales", "b" * 32, new, "ann", "ann")
        won: list[str] = []
        for worker in ("a", "b") * 4:
            with session_scope(url) as session:
                row = jobs.claim_next(session, worker)
                if row is not None:
                    won.append(row.id)
                    # A second claim of the same row by the other worker fails.
                    assert jobs.claim(session, row.id, "other") is None
        assert sorted(won) == sorted(n.id for n in new)

    if kind == "sqlite":
        claims(f"sqlite:///{tmp_path / 'claims.db'}")
    else:
        with pg_database("tlm_jobs") as url:
            claims(url)


def test_a_job_queued_on_one_replica_runs_on_another(tmp_path: Path) -> None:
    """With PostgreSQL the queued copy is a row: replica B's worker runs what A queued."""
    with pg_database("tlm_staged") as url:
        replicas = [
            build_services(Settings(data_dir=tmp_path / name, database_url=url,
                                    master_key="staged-test-master-key-0123456789abcdef"))
            for name in ("a", "b")
        ]  # fmt: skip
        a, b = replicas
        try:
            note = write(tmp_path, "handover.md", "The handover word is quokka-staged.\n")
            [queued] = a.ingest_jobs.enqueue(
                a.tenants.get("sales"), [note], ["handover.md"], "ann@example.com", "ann"
            )
            assert not (a.knowledge.tenant_dir(a.tenants.get("sales")) / "queue").exists()
            assert b.ingest_jobs.run_pending() == 1  # B claims it, A never ran
            [done] = [j for j in a.ingest_jobs.list_jobs(a.tenants.get("sales"))
                      if j.id == queued.id]  # fmt: skip
            assert (done.state, done.error) == ("indexed", None), done
            with session_scope(url) as session:  # the copy is gone once indexed
                assert session.query(StagedRow).count() == 0
        finally:
            for replica in replicas:
                replica.auditor.close()


# --- the real app and a real browser ---------------------------------------------------------
def _wait_text(page: Any, selector: str, text: str, timeout: int = 300_000) -> str:
    page.wait_for_function(
        "([s, t]) => { const e = document.querySelector(s); return e && e.innerText.includes(t); }",
        arg=[selector, text],
        timeout=timeout,
    )
    return str(page.locator(selector).inner_text())


@pytest.mark.browser
@pytest.mark.engine
def test_browser_upload_shows_progress_that_survives_a_reload(
    new_context: Any, app_server: Any, tmp_path: Path
) -> None:
    from tests.fixtures.browser import screenshot, sign_in
    from tests.ui_helpers import make_user

    tag = uuid.uuid4().hex[:6]
    lines = [[f"{tag} handbook page {p} line {i}: expenses over {i * 7} euros need a receipt."
              for i in range(40)] for p in range(80)]  # fmt: skip
    big = write(tmp_path, f"handbook-{tag}.pdf", make_pdf(lines))
    bad = write(tmp_path, f"scan-{tag}.pdf", b"not a pdf at all")
    page = new_context().new_page()
    sign_in(page, app_server.base_url, make_user(app_server.issuer, ["sales-editors"]))
    page.get_by_role("tab", name="Documents").click()
    page.locator("#docs-upload input[type=file]").set_input_files([str(big), str(bad)])
    page.locator("#docs-upload-btn").click()
    # The upload returns at once with the batch's progress: file k of n, the file's step.
    shown = _wait_text(page, "#docs-progress", "Indexing file 1 of 2", 120_000)
    assert big.name in shown, shown
    refused = _wait_text(page, "#docs-outcomes", bad.name, 60_000)
    assert "the content is not a PDF" in refused, refused
    screenshot(page, "ingest-progress")
    # A reload keeps the jobs (they are SQL rows): the batch is listed again, then indexed.
    page.reload()
    page.locator("#tl-user").wait_for(timeout=120_000)
    page.get_by_role("tab", name="Documents").click()
    _wait_text(page, "#docs-outcomes", big.name, 120_000)
    _wait_text(page, "#docs-table", big.name)
    done = page.locator("#docs-outcomes").inner_text()
    assert "ready for answers" in done and "the content is not a PDF" in done, done
    page.wait_for_function("() => !document.querySelector('#docs-progress-line')")
    screenshot(page, "ingest-done")
