"""Bad input: each hostile or broken file gets its own clear error, and nothing of it is
stored (no registry row, no vectors, no original), while the rest of the batch goes on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from core.knowledge.service import KnowledgeService
from tests.knowledge_support import (
    make_docx,
    make_docx_bomb,
    make_pdf,
    make_service,
    make_spinning_pdf,
    stored_state,
    write,
)

GOOD_TEXT = "The quarterly sales kickoff is in Lisbon on 12 February.\n"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> KnowledgeService:
    # Tight limits so the hostile files hit them quickly; the good file is far below them.
    return make_service(
        tmp_path_factory.mktemp("bad-input"),
        max_upload_mb=1,
        parse_timeout_seconds=3,
        parse_memory_mb=512,
    )


# name -> (file name, content builder, words the error must contain)
BAD_FILES: dict[str, tuple[str, Callable[[], bytes], tuple[str, ...]]] = {
    "unsupported type": ("tool.exe", lambda: b"MZ\x90\x00binary", ("not accepted",)),
    "extension does not match content": (
        "notes.txt",
        lambda: make_pdf([["a pdf pretending to be text"]]),
        ("application/pdf", "not text"),
    ),
    "docx that is a pdf": (
        "report.docx",
        lambda: make_pdf([["pdf"]]),
        ("not a .docx",),
    ),
    "pdf that is text": ("scan.pdf", lambda: b"just some words, no PDF here", ("not a PDF",)),
    "empty file": ("empty.md", lambda: b"", ("empty",)),
    "whitespace only": ("blank.txt", lambda: b"  \n\t\n ", ("no text",)),
    "undecodable text": ("latin1.csv", lambda: "caf\xe9,cr\xe8me\n".encode("latin-1"), ("UTF-8",)),
    "pdf that does not parse": (
        "broken.pdf",
        lambda: b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 9 0 R >>\ntrailer garbage",
        ("could not be read",),
    ),
    "decompression bomb": ("bomb.docx", make_docx_bomb, ("decompression bomb",)),
    "pdf that makes the parser spin": ("spin.pdf", make_spinning_pdf, ("time limit",)),
    "over the size limit": ("big.txt", lambda: b"word " * 300_000, ("over the limit",)),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_is_refused_with_its_error_and_nothing_is_stored(
    service: KnowledgeService, tmp_path: Path, case: str
) -> None:
    name, build, expected = BAD_FILES[case]
    tenant = service.tenants.get("sales")
    before = stored_state(service, "sales")
    good = write(tmp_path, f"good-{case.replace(' ', '-')}.txt", GOOD_TEXT + case)
    bad = write(tmp_path, name, build())

    outcomes = service.ingest(tenant, [bad, good], "tester")

    assert [o.status for o in outcomes] == ["refused", "indexed"], outcomes
    refused = outcomes[0]
    assert refused.filename in name and refused.document_id is None and refused.chunks == 0
    for word in expected:
        assert word in (refused.error or ""), refused.error
    rows, vectors, files = stored_state(service, "sales")
    # Exactly the good file was added: one row, its chunks, one encrypted original.
    assert (rows, files) == (before[0] + 1, before[2] + 1)
    assert vectors == before[1] + outcomes[1].chunks
    names = {d.filename for d in service.list_documents(tenant)}
    assert name not in names
    service.delete_document(tenant, outcomes[1].document_id)


@pytest.mark.parametrize(
    "hostile_name", ["../../../etc/cron.d/evil.txt", "..\\..\\win.ini.txt", "a/b.md", "..", ".env"]
)
def test_path_traversal_names_are_refused_and_never_used_as_paths(
    service: KnowledgeService, tmp_path: Path, hostile_name: str
) -> None:
    tenant = service.tenants.get("sales")
    before = stored_state(service, "sales")
    upload = write(tmp_path, "upload.txt", "Harmless words about the pricing of plans.\n")

    [outcome] = service.ingest(tenant, [upload], "tester", names=[hostile_name])

    assert outcome.status == "refused"
    assert "name" in (outcome.error or "")
    assert stored_state(service, "sales") == before
    assert not (tmp_path.parent / "etc").exists()
    for path in service.settings.data_dir.rglob("*"):
        assert "evil" not in path.name and "win.ini" not in path.name


def test_missing_file_in_a_batch_is_refused_and_the_rest_continues(
    service: KnowledgeService, tmp_path: Path
) -> None:
    tenant = service.tenants.get("sales")
    good = write(tmp_path, "fine.md", "# Fine\nThe demo day is on Thursday.\n")
    outcomes = service.ingest(tenant, [tmp_path / "missing.txt", good], "tester")
    assert [o.status for o in outcomes] == ["refused", "indexed"]
    assert "could not be read" in (outcomes[0].error or "")
    service.delete_document(tenant, outcomes[1].document_id)


def test_a_docx_that_is_fine_is_not_mistaken_for_a_bomb(
    service: KnowledgeService, tmp_path: Path
) -> None:
    tenant = service.tenants.get("sales")
    # Highly repetitive but honest content: compresses well, stays far from the limits.
    doc = write(tmp_path, "repetitive.docx", make_docx(["Renewal terms apply."] * 300))
    [outcome] = service.ingest(tenant, [doc], "tester")
    assert outcome.status == "indexed", outcome.error
    service.delete_document(tenant, outcome.document_id)
