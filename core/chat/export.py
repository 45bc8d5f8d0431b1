"""A conversation as a file its owner can keep: Markdown to read, JSON to process.

Pure functions of a `Conversation` already opened for its owner (`conversations.get_conversation`
is the check: another user's or team's id is `NotFound` before anything is written). Both
formats carry every message with its sources (file, location, snippet) and its rating, so an
export says what each answer stood on.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any, Literal

from core.chat.conversations import Conversation, StoredMessage
from core.errors import InvalidRequest

ExportFormat = Literal["markdown", "json"]
Ratings = dict[int, tuple[str, str | None]]  # message id -> (rating, comment)
FORMATS: dict[str, str] = {"markdown": "md", "json": "json"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def parse_format(value: object) -> ExportFormat:
    """`markdown` or `json` (InvalidRequest otherwise)."""
    if value == "markdown":
        return "markdown"
    if value == "json":
        return "json"
    raise InvalidRequest("Export as Markdown or JSON.")


def export_filename(conversation: Conversation, fmt: ExportFormat) -> str:
    """A file name from the title: safe on every file system, never a path."""
    stem = _UNSAFE.sub("-", conversation.title).strip("-.")[:60] or "conversation"
    return f"{stem}.{FORMATS[fmt]}"


def render_export(
    conversation: Conversation,
    fmt: ExportFormat,
    ratings: Ratings | None = None,
) -> str:
    """The conversation as Markdown or JSON text; `ratings`: message id -> (rating, comment)."""
    ratings = ratings or {}
    if fmt == "json":
        return json.dumps(_as_json(conversation, ratings), indent=2, ensure_ascii=False) + "\n"
    return _as_markdown(conversation, ratings)


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _as_json(conversation: Conversation, ratings: Ratings) -> dict[str, Any]:
    def message(m: StoredMessage) -> dict[str, Any]:
        rating, comment = ratings.get(m.id or -1, (None, None))
        item: dict[str, Any] = {"role": m.role, "content": m.content, "time": _time(m.created_at)}
        if m.role == "assistant":
            item["sources"] = [_source(s) for s in m.sources]
            item["rating"] = rating
            item["comment"] = comment
        return item

    return {
        "id": conversation.id,
        "title": conversation.title,
        "team": conversation.tenant_id,
        "created_at": _time(conversation.created_at),
        "updated_at": _time(conversation.updated_at),
        "messages": [message(m) for m in conversation.messages],
    }


def _source(source: dict[str, Any]) -> dict[str, Any]:
    keys = ("document_id", "filename", "location", "snippet", "score")
    return {k: source.get(k) for k in keys}


def _as_markdown(conversation: Conversation, ratings: Ratings) -> str:
    lines = [f"# {_line(conversation.title)}", ""]
    lines.append(f"Team: {conversation.tenant_id} · exported conversation {conversation.id}")
    for message in conversation.messages:
        who = "You" if message.role == "user" else "Assistant"
        lines += ["", f"## {who}", "", message.content.strip() or "(empty)"]
        if message.role != "assistant":
            continue
        rating, comment = ratings.get(message.id or -1, (None, None))
        if rating is not None:
            lines += ["", f"Rated: thumbs {rating}" + (f": {_line(comment)}" if comment else "")]
        lines += ["", "Sources:" if message.sources else "Sources: none"]
        for n, source in enumerate(message.sources, 1):
            where = f" ({_line(source.get('location', ''))})" if source.get("location") else ""
            lines.append(f"{n}. {_line(source.get('filename', '?'))}{where}")
            snippet = _line(source.get("snippet", ""))[:500]
            if snippet:
                lines.append(f"   > {snippet}")
    return "\n".join(lines) + "\n"


def _line(value: object) -> str:
    """One line of text (a title or snippet may hold newlines that would break the layout)."""
    return " ".join(str(value or "").split())
