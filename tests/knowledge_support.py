"""Helpers for the knowledge tests: a service on a temporary data dir, and real test files.

The PDFs are written by hand (a valid xref table, Helvetica text), the .docx files with
python-docx, so each test file is a real document of its type.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from pathlib import Path
from typing import Any

from core.config import Settings
from core.db import upgrade_database
from core.knowledge.service import KnowledgeService
from core.plugins import load_tenants


def make_service(data_dir: Path, **overrides: Any) -> KnowledgeService:
    """A KnowledgeService with the built-in tenants on its own data dir and SQLite file."""
    settings = Settings(data_dir=data_dir, **overrides)
    upgrade_database(settings.resolved_database_url)
    return KnowledgeService(settings, load_tenants(settings))


def _pdf_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _page_stream(lines: list[str]) -> bytes:
    ops = ["BT", "/F1 12 Tf", "14 TL", "72 720 Td"]
    for line in lines:
        ops.append(f"({_pdf_escape(line)}) Tj T*")
    ops.append("ET")
    return "\n".join(ops).encode("latin-1")


def build_pdf(streams: list[bytes], compress: bool = False) -> bytes:
    """A PDF with one page per content stream (Helvetica as /F1)."""
    n = len(streams)
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids ["
        + b" ".join(f"{3 + 2 * i} 0 R".encode() for i in range(n))
        + f"] /Count {n} >>".encode(),
    ]
    font_obj = 3 + 2 * n
    for i, stream in enumerate(streams):
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R "
            f"/Resources << /Font << /F1 {font_obj} 0 R >> >> >>".encode()
        )
        body = zlib.compress(stream, 9) if compress else stream
        flt = b" /Filter /FlateDecode" if compress else b""
        objects.append(
            b"<< /Length "
            + str(len(body)).encode()
            + flt
            + b" >>\nstream\n"
            + body
            + b"\nendstream"
        )
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, obj in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n".encode() + obj + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    out.write(
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return out.getvalue()


def make_pdf(pages: list[list[str]]) -> bytes:
    """A text PDF: `pages` is a list of pages, each a list of lines."""
    return build_pdf([_page_stream(lines) for lines in pages])


def make_spinning_pdf() -> bytes:
    """A ~30 KB PDF whose one page holds millions of text operators: text extraction grinds
    on it far longer than any sane time limit (the stream inflates a thousandfold)."""
    stream = b"BT /F1 1 Tf " + b"(a) Tj 0 1 Td " * 3_000_000 + b"ET"
    return build_pdf([stream], compress=True)


def make_docx(paragraphs: list[str]) -> bytes:
    """A real .docx written by python-docx."""
    import docx

    document = docx.Document()
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def make_docx_bomb() -> bytes:
    """A .docx-shaped zip whose document.xml inflates to ~300 MB from a few hundred KB."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        with z.open("word/document.xml", "w", force_zip64=True) as member:
            chunk = b"<w:t>" + b"A" * (1024 * 1024) + b"</w:t>"
            for _ in range(300):
                member.write(chunk)
    return out.getvalue()


def write(folder: Path, name: str, data: bytes | str) -> Path:
    """Write `data` to folder/name (a plain file name) and return the path."""
    path = folder / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def stored_state(service: KnowledgeService, tenant_id: str) -> tuple[int, int, int]:
    """(registry rows, vectors, original files) of one tenant: what "nothing stored" counts."""
    tenant = service.tenants.get(tenant_id)
    rows = len(service.list_documents(tenant))
    store = service.vector_store(tenant)
    vectors = len(store.get_nodes(None))
    files_dir = service.tenant_dir(tenant) / "files"
    files = len(list(files_dir.iterdir())) if files_dir.exists() else 0
    return rows, vectors, files
