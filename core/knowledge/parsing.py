"""Turn a checked file into text parts, in a worker process with a time and memory limit.

Parsers (pypdf through llama-index's PDFReader, docx2txt, BeautifulSoup) run on hostile
input; a crafted file can make them loop or allocate without bound. Each file is parsed in
a child forked from a `forkserver` (a clean process: forking the server itself, with its
threads, is not safe) under RLIMIT_AS/RLIMIT_CPU, and killed when the time limit passes.
The server only ever receives plain (text, location) pairs back.
"""

from __future__ import annotations

import csv
import io
import multiprocessing
import multiprocessing.forkserver
import re
import resource
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from core.errors import FileTooLarge, IngestionError
from core.knowledge.uploads import too_much_text

CSV_ROWS_PER_PART = 25
HEADING = re.compile(r"^(#{1,6})\s+(.*)")


@dataclass(frozen=True)
class ParseLimits:
    """What one parse may produce, beyond time and memory (None: no cap, for re-indexing
    documents that passed the caps when they were uploaded)."""

    max_chars: int | None = None
    max_pdf_pages: int | None = None


class _OverLimit(Exception):
    """The file is over a content cap; the message is for the uploader."""


@dataclass(frozen=True)
class Part:
    """A piece of a document's text and where it is ("page 3", "section: Pricing", "")."""

    text: str
    location: str


def _parse_pdf(path: Path) -> list[Part]:
    from llama_index.readers.file.docs.base import PDFReader

    docs = PDFReader().load_data(path)
    return [Part(d.text, f"page {d.metadata.get('page_label', i + 1)}") for i, d in enumerate(docs)]


def _parse_docx(path: Path) -> list[Part]:
    from llama_index.readers.file.docs.base import DocxReader

    return [Part(d.text, "") for d in DocxReader().load_data(path)]


def _read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8-sig")


def _parse_text(path: Path) -> list[Part]:
    return [Part(_read_text(path), "")]


def _parse_markdown(path: Path) -> list[Part]:
    # Split at headings (outside code fences) so each chunk can name its section.
    parts: list[Part] = []
    lines: list[str] = []
    heading, in_code = "", False
    for line in _read_text(path).splitlines():
        if line.startswith("```"):
            in_code = not in_code
        match = None if in_code else HEADING.match(line)
        if match:
            if "\n".join(lines).strip():
                parts.append(Part("\n".join(lines), f"section: {heading}" if heading else ""))
            heading, lines = match.group(2).strip(), []
        lines.append(line)
    if "\n".join(lines).strip():
        parts.append(Part("\n".join(lines), f"section: {heading}" if heading else ""))
    return parts


def _parse_html(path: Path) -> list[Part]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(_read_text(path), "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    parts: list[Part] = []
    lines: list[str] = []
    heading = ""
    # Split at headings so each chunk can say which section it came from.
    for element in soup.find_all(["h1", "h2", "h3", "p", "li", "td", "th", "pre", "div"]):
        if element.name in {"h1", "h2", "h3"}:
            if lines:
                parts.append(Part("\n".join(lines), f"section: {heading}" if heading else ""))
            heading, lines = element.get_text(" ", strip=True), [element.get_text(" ", strip=True)]
        elif element.find(["p", "li", "td", "div", "h1", "h2", "h3"]) is None:
            lines.append(element.get_text(" ", strip=True))
    if lines:
        parts.append(Part("\n".join(lines), f"section: {heading}" if heading else ""))
    return parts or [Part(soup.get_text("\n", strip=True), "")]


def _parse_csv(path: Path) -> list[Part]:
    rows = list(csv.reader(io.StringIO(_read_text(path))))
    if not rows:
        return []
    header, body = rows[0], rows[1:]
    parts = []
    # Each part repeats the header so a chunk of rows still says what its columns mean.
    for start in range(0, len(body), CSV_ROWS_PER_PART):
        block = body[start : start + CSV_ROWS_PER_PART]
        text = "\n".join(", ".join(r) for r in [header, *block])
        first, last = start + 2, start + 1 + len(block)  # spreadsheet row numbers
        parts.append(Part(text, f"rows {first}-{last}"))
    return parts or [Part(", ".join(header), "row 1")]


PARSERS: dict[str, Callable[[Path], list[Part]]] = {
    "pdf": _parse_pdf,
    "docx": _parse_docx,
    "text": _parse_text,
    "markdown": _parse_markdown,
    "html": _parse_html,
    "csv": _parse_csv,
}


def _vm_size_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _check_pages(path: Path, max_pages: int | None) -> None:
    # Counting pages reads only the page tree: refuse before extracting any text.
    if max_pages is None:
        return
    import pypdf

    pages = len(pypdf.PdfReader(path).pages)
    if pages > max_pages:
        raise _OverLimit(
            f"the PDF has {pages:,} pages, over the limit of {max_pages:,} pages per file; "
            "split it into smaller files."
        )


def _check_chars(parts: list[Part], max_chars: int | None) -> None:
    chars = sum(len(p.text) for p in parts)
    if max_chars is not None and chars > max_chars:
        raise _OverLimit(too_much_text(chars, max_chars))


def _parse_within(path: Path, kind: str, limits: ParseLimits) -> list[Part]:
    if kind == "pdf":
        _check_pages(path, limits.max_pdf_pages)
    parts = PARSERS[kind](path)
    # Checked here, in the worker: an oversized text never crosses the pipe to the server.
    _check_chars(parts, limits.max_chars)
    return parts


def _child(
    path: str, kind: str, memory_mb: int, cpu_seconds: int, limits: ParseLimits, conn: Connection
) -> None:
    # The limit is on top of what the (preloaded) worker already maps, so the setting means
    # "memory one parse may use", whatever the libraries' baseline is.
    limit = _vm_size_bytes() + memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    try:
        parts = _parse_within(Path(path), kind, limits)
        conn.send(("ok", [(p.text, p.location) for p in parts]))
    except _OverLimit as exc:
        conn.send(("over_limit", str(exc)))
    except MemoryError:
        conn.send(("error", "the parser ran out of memory (memory limit)"))
    except Exception as exc:  # any parser failure is the file's fault; report it, never crash
        conn.send(("error", f"{type(exc).__name__}: {str(exc)[:300]}"))
    finally:
        conn.close()


_context: multiprocessing.context.ForkServerContext | None = None


def _worker_context() -> multiprocessing.context.ForkServerContext:
    global _context
    if _context is None:
        ctx = multiprocessing.get_context("forkserver")
        # Import the parsers once in the fork server, so each per-file fork starts instantly.
        # Each child also re-runs the main script; our entry points (`tenantllm`, app.py)
        # import core.cli, ~1 s per uploaded file unless the server already holds it.
        # (Preloading "__main__" would do, but Python 3.11 ignores it: CPython gh-137996.)
        ctx.set_forkserver_preload(
            [
                "core.cli",
                "core.knowledge.parsing",
                "llama_index.readers.file.docs.base",
                "pypdf",
                "bs4",
            ]
        )
        _context = ctx
    return _context


def start_parser() -> None:
    """Start the parsers' fork server now (2-4 s: it imports the parsers and the CLI).

    Called at startup, so that the first upload after a restart does not wait for it.
    """
    _worker_context()
    multiprocessing.forkserver.ensure_running()


def parse_in_sandbox(
    path: Path,
    kind: str,
    name: str,
    timeout_s: float,
    memory_mb: int,
    limits: ParseLimits | None = None,
) -> list[Part]:
    """Parse `path` as `kind` in a limited worker; IngestionError naming `name` on failure
    (FileTooLarge when the file is over one of `limits`)."""
    ctx = _worker_context()
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_child,
        args=(str(path), kind, memory_mb, int(timeout_s) + 1, limits or ParseLimits(), sender),
        daemon=True,
    )
    proc.start()
    sender.close()
    try:
        if not receiver.poll(timeout_s):
            raise IngestionError(
                f"{name}: parsing took longer than {timeout_s:g} s (time limit); refused."
            )
        status, payload = receiver.recv()
    except EOFError:
        raise IngestionError(
            f"{name}: the parser was stopped (memory or CPU limit exceeded); refused."
        ) from None
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
        receiver.close()
    if status == "over_limit":
        raise FileTooLarge(f"{name}: {payload}")
    if status != "ok":
        raise IngestionError(f"{name}: the file could not be read: {payload}")
    return [Part(text, location) for text, location in payload]
