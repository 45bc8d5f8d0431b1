"""Checks on an uploaded file before anything parses it: name, type, size, content, zip bombs.

All of these are cheap and run in the server process; anything that needs a real parser runs
in the sandboxed worker (core/knowledge/parsing.py). Each failure is an `IngestionError`
subclass whose message tells the uploader what is wrong with *their* file.
"""

from __future__ import annotations

import io
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path

import filetype

from core.errors import FileTooLarge, IngestionError, UnsupportedFile

#: Accepted extensions and the parser kind for each.
SUPPORTED_TYPES: dict[str, str] = {
    ".txt": "text",
    ".md": "markdown",
    ".pdf": "pdf",
    ".docx": "docx",
    ".html": "html",
    ".htm": "html",
    ".csv": "csv",
}
TEXT_KINDS = {"text", "markdown", "html", "csv"}

# A .docx is a zip: refuse archives that inflate far beyond their size before parsing them.
MAX_ZIP_RATIO = 100
MAX_ZIP_ENTRIES = 2000
MAX_INFLATED_BYTES = 200_000_000
MAX_NAME_CHARS = 200
# A .docx's text is inside its XML parts; XML larger than this many bytes per allowed
# character of text cannot be within the text cap of a sane document: refused unparsed.
XML_BYTES_PER_TEXT_CHAR = 50


@dataclass(frozen=True)
class CheckedUpload:
    """A file that passed every pre-parse check."""

    name: str
    kind: str
    data: bytes


def clean_filename(name: str) -> str:
    """The display name to store; refuses names that try to be paths (never used as a path)."""
    if not isinstance(name, str) or not name.strip():
        raise IngestionError("The file has no name.")
    if any(sep in name for sep in ("/", "\\", "\x00")) or name.strip() in {".", ".."}:
        raise IngestionError(f"File name {name!r} contains a path; upload the file by its name.")
    cleaned = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    if not cleaned or cleaned.startswith("."):
        raise IngestionError(f"File name {name!r} is not a usable name.")
    if len(cleaned) > MAX_NAME_CHARS:
        stem, dot, ext = cleaned.rpartition(".")
        cleaned = stem[: MAX_NAME_CHARS - len(ext) - 1] + dot + ext if dot else cleaned[:200]
    return cleaned


def check_upload(
    path: Path, name: str, max_bytes: int, max_chars: int | None = None
) -> CheckedUpload:
    """Read and check one file; raises the IngestionError that describes the problem.

    `max_chars` (the text cap) is checked here where that is cheap (text files, a .docx's
    XML size); the parser checks the exact extracted text again.
    """
    name = clean_filename(name)
    extension = Path(name).suffix.lower()
    kind = SUPPORTED_TYPES.get(extension)
    if kind is None:
        accepted = ", ".join(sorted(SUPPORTED_TYPES))
        raise UnsupportedFile(f"{name}: type {extension or '(none)'} is not accepted ({accepted}).")
    size = path.stat().st_size
    if size > max_bytes:
        raise FileTooLarge(
            f"{name}: {size / 1e6:.1f} MB is over the limit of {max_bytes / 1e6:.0f} MB."
        )
    if size == 0:
        raise IngestionError(f"{name}: the file is empty.")
    data = path.read_bytes()[: max_bytes + 1]
    if len(data) > max_bytes:  # grew while we looked
        raise FileTooLarge(f"{name}: over the limit of {max_bytes / 1e6:.0f} MB.")
    _check_content(name, kind, data, max_chars)
    return CheckedUpload(name=name, kind=kind, data=data)


def _check_content(name: str, kind: str, data: bytes, max_chars: int | None) -> None:
    if kind == "pdf":
        if b"%PDF-" not in data[:1024]:
            raise UnsupportedFile(f"{name}: the content is not a PDF ({_describe(data)}).")
    elif kind == "docx":
        _check_docx(name, data, max_chars)
    else:
        _check_text(name, data, max_chars)


def too_much_text(chars: int, max_chars: int) -> str:
    """What to tell the uploader of a file whose text is over the per-file character cap."""
    return (
        f"its text is {chars:,} characters, over the limit of {max_chars:,} "
        "characters per file; split it into smaller files."
    )


def _describe(data: bytes) -> str:
    guess = filetype.guess(data)
    return f"it looks like {guess.mime}" if guess else "no known file signature"


def _check_text(name: str, data: bytes, max_chars: int | None) -> None:
    guess = filetype.guess(data)
    if guess is not None:
        raise UnsupportedFile(f"{name}: the content is {guess.mime}, not text.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IngestionError(
            f"{name}: the text is not valid UTF-8 (byte {exc.start}); save it as UTF-8."
        ) from None
    if "\x00" in text:
        raise IngestionError(f"{name}: the text contains NUL bytes; it is not a text file.")
    if not text.strip():
        raise IngestionError(f"{name}: the file contains no text.")
    if max_chars is not None and len(text) > max_chars:
        raise FileTooLarge(f"{name}: {too_much_text(len(text), max_chars)}")


def _check_docx(name: str, data: bytes, max_chars: int | None) -> None:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise UnsupportedFile(f"{name}: the content is not a .docx ({_describe(data)}).") from None
    with archive:
        infos = archive.infolist()
        if "word/document.xml" not in {info.filename for info in infos}:
            raise UnsupportedFile(f"{name}: the archive is not a Word document.")
        if len(infos) > MAX_ZIP_ENTRIES:
            raise IngestionError(f"{name}: the document has too many parts ({len(infos)}).")
        inflated = sum(info.file_size for info in infos)
        if inflated > MAX_ZIP_RATIO * len(data) or inflated > MAX_INFLATED_BYTES:
            raise IngestionError(
                f"{name}: the document would expand to {inflated / 1e6:.0f} MB "
                "(a decompression bomb?); refused."
            )
        xml = sum(i.file_size for i in infos if i.filename.lower().endswith((".xml", ".rels")))
        if max_chars is not None and xml > XML_BYTES_PER_TEXT_CHAR * max_chars:
            raise FileTooLarge(
                f"{name}: the document holds more text than the limit of {max_chars:,} "
                f"characters per file (its XML expands to {xml / 1e6:.0f} MB); "
                "split it into smaller files."
            )
