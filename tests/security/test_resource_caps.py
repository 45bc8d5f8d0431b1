"""Resource exhaustion (issue 12, item 8): caps on what one file, one team and one API request
may make the server parse, embed, store or read.

The knowledge service runs in-process with the default caps (the caps under test are the
ones a deployment gets); the API body cap and the upload refusal as a person sees it (the
Gradio upload event, its audit row) run against the real app.
"""

from __future__ import annotations

import io
import json
import os
import select
import socket
import sqlite3
import zipfile
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from core.audit.query import AuditFilters
from core.config import Settings
from core.db import session_scope, utcnow
from core.knowledge.documents import DocumentRow
from core.knowledge.service import KnowledgeService
from tests.knowledge_support import make_docx, make_pdf, make_service, stored_state, write
from tests.security.test_output_scoping import GradioSession, final_job_row
from tests.ui_helpers import app_db_url, make_user, signed_in_client, wait_for_audit

DEFAULTS = Settings()
TEXT_CAP = DEFAULTS.max_document_chars
SENTENCE = "The renewal discount for annual plans is twelve percent in every region. "


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> KnowledgeService:
    return make_service(tmp_path_factory.mktemp("caps"))


def text_bomb_docx() -> bytes:
    """A real .docx of ~100 KB whose text is three times the text cap.

    Repeated text deflates ~300:1; a member of random bytes keeps the whole archive under
    the old 100:1 "decompression bomb" ratio, which is all such a file had to pass.
    """
    repeats = 3 * TEXT_CAP // len(SENTENCE) // 100 + 1
    document = io.BytesIO(make_docx([SENTENCE * 100] * repeats))
    out = io.BytesIO()
    with zipfile.ZipFile(document) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            target.writestr(info, source.read(info), compress_type=zipfile.ZIP_DEFLATED)
        target.writestr("word/media/padding.bin", os.urandom(60_000))
    return out.getvalue()


def many_pages_pdf(pages: int) -> bytes:
    """A PDF (written with pypdf) whose every page holds a line of text."""
    import pypdf

    page = pypdf.PdfReader(io.BytesIO(make_pdf([["Price list, page of many."]]))).pages[0]
    writer = pypdf.PdfWriter()
    for _ in range(pages):
        writer.add_page(page)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def many_chunks_csv(chunks: int) -> bytes:
    """A small CSV (~25 KB per 100 chunks) far under the text cap whose rows make `chunks`
    chunks: each block of 25 rows is a part of its own."""
    rows = ["region,discount"] + [f"r{i},{i % 13}" for i in range(25 * chunks)]
    return ("\n".join(rows) + "\n").encode()


def _refused(service: KnowledgeService, path: Path) -> str:
    before = stored_state(service, "sales")
    [outcome] = service.ingest(service.tenants.get("sales"), [path], "tester")
    assert outcome.status == "refused", (outcome.status, outcome.chunks)
    assert outcome.document_id is None and outcome.chunks == 0
    # Nothing half-written: no registry row, no vector, no encrypted original.
    assert stored_state(service, "sales") == before
    assert outcome.filename not in {d.filename for d in service.list_documents(_sales(service))}
    return outcome.error or ""


def _sales(service: KnowledgeService):  # type: ignore[no-untyped-def]
    return service.tenants.get("sales")


def test_docx_with_text_far_over_the_cap_is_refused(
    service: KnowledgeService, tmp_path: Path
) -> None:
    data = text_bomb_docx()
    assert len(data) < 200_000  # the point: a small file
    error = _refused(service, write(tmp_path, "terms.docx", data))
    assert "characters" in error and f"{TEXT_CAP:,}" in error, error


def test_text_file_over_the_text_cap_is_refused(service: KnowledgeService, tmp_path: Path) -> None:
    body = (SENTENCE * (TEXT_CAP // len(SENTENCE) + 100)).encode()
    assert len(body) < DEFAULTS.max_upload_mb * 1024 * 1024  # under the size limit
    error = _refused(service, write(tmp_path, "long.txt", body))
    assert "characters" in error and f"{TEXT_CAP:,}" in error, error


def test_pdf_with_more_pages_than_the_cap_is_refused(
    service: KnowledgeService, tmp_path: Path
) -> None:
    pages = DEFAULTS.max_pdf_pages + 1
    error = _refused(service, write(tmp_path, "catalogue.pdf", many_pages_pdf(pages)))
    assert f"{pages:,} pages" in error and f"{DEFAULTS.max_pdf_pages:,}" in error, error


def test_file_making_more_chunks_than_the_cap_is_refused(
    service: KnowledgeService, tmp_path: Path
) -> None:
    data = many_chunks_csv(DEFAULTS.max_document_chunks + 50)
    assert len(data) < TEXT_CAP  # under the text cap: only the chunk cap stops it
    error = _refused(service, write(tmp_path, "regions.csv", data))
    assert "chunks" in error and f"{DEFAULTS.max_document_chunks:,}" in error, error


def test_team_at_its_storage_quota_cannot_add_a_document(
    service: KnowledgeService, tmp_path: Path
) -> None:
    quota = DEFAULTS.team_storage_mb * 1024 * 1024
    with session_scope(service.settings.resolved_database_url) as session:
        stored = sum(d.size for d in service.list_documents(_sales(service)))
        session.add(_placeholder_row("sales", quota - stored))
    try:
        error = _refused(service, write(tmp_path, "one-more.txt", SENTENCE))
        assert "quota" in error and f"{DEFAULTS.team_storage_mb} MB" in error, error
        # The quota is per team: another team still adds documents.
        [other] = service.ingest(
            service.tenants.get("finance"), [write(tmp_path, "f.txt", SENTENCE)], "tester"
        )
        assert other.status == "indexed", other.error
    finally:
        with session_scope(service.settings.resolved_database_url) as session:
            session.query(DocumentRow).filter(DocumentRow.id == "0" * 32).delete()


def _placeholder_row(tenant_id: str, size: int) -> DocumentRow:
    """A registry row standing for documents of `size` bytes already stored."""
    return DocumentRow(
        id="0" * 32,
        tenant_id=tenant_id,
        filename="archive.pdf",
        sha256="0" * 64,
        size=size,
        chunks=0,
        uploaded_by="tester",
        uploaded_at=utcnow(),
    )


# --- the real app: an upload over a cap, as a person does it ---------------------------------
def _chroma_vectors(data_dir: Path, tenant_id: str) -> int:
    """Vectors in a tenant's Chroma store, read from its SQLite file (the app holds it open)."""
    path = data_dir / "tenants" / tenant_id / "chroma" / "chroma.sqlite3"
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])


def _app_state(data_dir: Path, tenant_id: str) -> tuple[int, int, int]:
    """(registry rows, vectors, encrypted originals) of a tenant of the running app."""
    with session_scope(app_db_url(data_dir)) as session:
        rows = session.query(DocumentRow).filter(DocumentRow.tenant_id == tenant_id).count()
    files = len(list((data_dir / "tenants" / tenant_id / "files").iterdir()))
    return rows, _chroma_vectors(data_dir, tenant_id), files


def test_upload_over_the_text_cap_is_refused_shown_and_audited(app_server) -> None:
    """Through Gradio's upload and the Documents tab's event, as a sales editor."""
    started = datetime.now(UTC)
    before = _app_state(app_server.data_dir, "sales")
    sub = make_user(app_server.issuer, ["sales-editors"], prefix="caps")
    with signed_in_client(app_server.base_url, sub) as client:
        page = GradioSession(client)  # one browser tab: its load event sets the team choices
        page.ok("load", [])
        sent = client.post(
            "/gradio_api/upload", files={"files": ("terms-bomb.docx", text_bomb_docx())}
        )
        assert sent.status_code == 200, sent.text[:300]
        file_data = {
            "path": sent.json()[0],
            "orig_name": "terms-bomb.docx",
            "meta": {"_type": "gradio.FileData"},
        }
        page.ok("do_upload", [[file_data], "sales"])
        # Its XML passes the cheap check on arrival; the job reads the text and refuses it.
        name, status, chunks, detail = final_job_row(page, "sales", "terms-bomb.docx")
    assert (name, status, chunks) == ("terms-bomb.docx", "refused", 0)
    assert "characters" in detail and f"{TEXT_CAP:,}" in detail, detail
    assert _app_state(app_server.data_dir, "sales") == before
    db_url = app_db_url(app_server.data_dir)
    [upload] = wait_for_audit(
        db_url, AuditFilters(since=started, action="ui_upload", tenant_id="sales", user=sub)
    )
    assert "terms-bomb.docx: queued" in (upload.detail or ""), upload.detail
    [job] = wait_for_audit(
        db_url, AuditFilters(since=started, action="ingest_job", tenant_id="sales", user=sub)
    )
    assert job.outcome == "error", job
    assert "terms-bomb.docx: " in (job.detail or ""), job.detail
    assert f"{TEXT_CAP:,} characters" in (job.detail or ""), job.detail


# --- the real app: the /v1 body cap ----------------------------------------------------------
def _connect(base_url: str) -> socket.socket:
    parts = urlsplit(base_url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=120)
    # A small send buffer: what we count as sent is close to what the server was offered.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    return sock


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], dict]:  # type: ignore[type-arg]
    """Status, headers and JSON body of one HTTP/1.1 response (the server closes after it)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, json.loads(body)


def _assert_too_large(status: int, body: dict) -> None:  # type: ignore[type-arg]
    assert status == 413, (status, body)
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["code"] == "request_too_large", body
    assert f"{DEFAULTS.api_max_body_bytes:,} bytes" in body["error"]["message"], body


def _request_head(base_url: str, extra: str) -> bytes:
    host = urlsplit(base_url).netloc
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nAuthorization: Bearer tlm_not-a-key\r\n{extra}\r\n"
    ).encode()


def test_oversize_body_is_refused_with_413(app_server) -> None:
    body = json.dumps(
        {"model": "sales", "messages": [{"role": "user", "content": "x" * 2_000_000}]}
    )
    answer = httpx.post(
        f"{app_server.base_url}/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json", "authorization": "Bearer tlm_not-a-key"},
        timeout=120,
    )
    _assert_too_large(answer.status_code, answer.json())


def test_content_length_over_the_cap_is_refused_before_the_body_is_read(app_server) -> None:
    """A client that announces 50 MiB and sends a few bytes: refused at once, never waited for."""
    with closing(_connect(app_server.base_url)) as sock:
        sock.sendall(_request_head(app_server.base_url, f"Content-Length: {50 * 1024 * 1024}\r\n"))
        sock.sendall(b'{"model": "sales", ')
        status, _headers, body = _read_response(sock)
    _assert_too_large(status, body)


def test_chunked_body_is_cut_off_while_it_streams(app_server) -> None:
    """No Content-Length at all (chunked): the 413 comes while the client is still sending."""
    piece = b"x" * 65536
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    limit = 32 * 1024 * 1024  # what the client would send in all
    sent, status, body = 0, 0, {}
    with closing(_connect(app_server.base_url)) as sock:
        sock.sendall(_request_head(app_server.base_url, "Transfer-Encoding: chunked\r\n"))
        while sent < limit:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break  # the server answered before the body ended
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
        else:
            sock.sendall(b"0\r\n\r\n")
        status, _headers, body = _read_response(sock)
    _assert_too_large(status, body)
    assert sent < limit, f"the server read all {sent:,} bytes before answering"
    print(f"413 after the client had sent {sent:,} bytes (cap {DEFAULTS.api_max_body_bytes:,})")
