"""The passage a source cites, read back from the tenant's own chunks, for a person to check.

A source names a document, a location (`page 3`, `section: Pricing`, `rows 2-26`, `part 4`)
and the chunk's text. The passage is the whole part the chunk came from (the PDF page, the
Markdown/HTML section, the CSV row block; for text and Word files, the text around it),
stitched back from that part's chunks in the tenant's own vector store: each chunk keeps its
character offsets in the part (llama-index's `start_char_idx`/`end_char_idx`), and the
overlaps are dropped. No original is decrypted or parsed again to show a passage.

Scoped twice, like retrieval: the document must be in this tenant's registry, and only the
tenant's own store is read (its chunks carry the tenant id, checked again here). Anything
else is `NotFound`, with nothing of the document in the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from llama_index.core.schema import TextNode
from llama_index.core.vector_stores import MetadataFilter, MetadataFilters

from core.db import session_scope
from core.errors import NotFound
from core.knowledge import documents
from core.knowledge.chunking import DOCUMENT_KEY, LOCATION_KEY, TENANT_KEY
from core.tenancy import Tenant

if TYPE_CHECKING:
    from llama_index.core.schema import BaseNode
    from llama_index.core.vector_stores.types import BasePydanticVectorStore

PART_KEY = "ref_doc_id"  # llama-index stores each chunk's source part id under this key
WINDOW_CHARS = 6000  # a long part is shown around the cited chunk, this many characters
NOT_FOUND = "This source is not among your team's documents any more (it may have been deleted)."


@dataclass(frozen=True)
class Passage:
    """The text around a cited chunk: `text[cited_start:cited_end]` is the chunk itself."""

    document_id: str
    filename: str
    location: str
    text: str
    cited_start: int
    cited_end: int
    cut_before: bool  # text was left out before (a long part, windowed)
    cut_after: bool


def cited_passage(
    tenant: Tenant,
    store: BasePydanticVectorStore,
    db_url: str,
    document_id: str,
    location: str,
    snippet: str,
) -> Passage:
    """The passage of `document_id` at `location` around the chunk `snippet`; NotFound when
    the document is not this tenant's (or no longer holds that chunk)."""
    with session_scope(db_url) as session:
        row = documents.get_document(session, tenant.id, str(document_id))
        filename = row.filename if row is not None else ""
    if row is None:
        raise NotFound(NOT_FOUND)
    at_location = _own(tenant, store, {DOCUMENT_KEY: row.id, LOCATION_KEY: str(location)})
    if not at_location:
        raise NotFound(NOT_FOUND)
    cited = next((n for n in at_location if n.get_content() == snippet), at_location[0])
    part = _own(tenant, store, {DOCUMENT_KEY: row.id, PART_KEY: cited.ref_doc_id or ""})
    text = stitch(part or [cited])
    chunk = cited.get_content()
    start = max(0, text.find(chunk))
    return _window(Passage(row.id, filename, str(location), text, start, start + len(chunk),
                           False, False))  # fmt: skip


def _own(tenant: Tenant, store: BasePydanticVectorStore, where: dict[str, str]) -> list[BaseNode]:
    filters = MetadataFilters(filters=[MetadataFilter(key=k, value=v) for k, v in where.items()])
    nodes = store.get_nodes(None, filters=filters)
    # The store is the tenant's own; the tenant id on each chunk is the second guard.
    return [n for n in nodes if n.metadata.get(TENANT_KEY) == tenant.id]


def stitch(chunks: list[BaseNode]) -> str:
    """One part's text from its chunks: in offset order, each overlap kept once."""
    # Our chunks are TextNodes (SentenceSplitter's): they carry their offsets in the part.
    nodes = [n for n in chunks if isinstance(n, TextNode)]
    ordered = sorted(nodes, key=lambda n: (n.start_char_idx is None, n.start_char_idx or 0))
    text, covered = "", 0  # `covered`: the part's offset that `text` reaches
    for node in ordered:
        content, start = node.get_content(), node.start_char_idx
        if start is None:  # no offsets: shown one after the other
            text += ("\n…\n" if text else "") + content
            continue
        if start >= covered:
            text += (" " if text and start > covered else "") + content
        else:
            text += content[covered - start :]
        covered = max(covered, node.end_char_idx or start + len(content))
    return text


def _window(passage: Passage) -> Passage:
    text = passage.text
    if len(text) <= WINDOW_CHARS:
        return passage
    room = max(0, WINDOW_CHARS - (passage.cited_end - passage.cited_start)) // 2
    begin = max(0, passage.cited_start - room)
    end = min(len(text), passage.cited_end + room)
    return Passage(
        passage.document_id, passage.filename, passage.location, text[begin:end],
        passage.cited_start - begin, passage.cited_end - begin, begin > 0, end < len(text),
    )  # fmt: skip
