"""Reading what Gradio's routes carry: session hashes, file references, SSE messages."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

from starlette.types import Scope

FILE_DATA_TYPE = "gradio.FileData"


class RepeatedParameter(ValueError):
    """A query parameter the guard checks was given more than once."""


def query_value(scope: Scope, name: str) -> str | None:
    """The one value of query parameter `name`, or None.

    Given twice, the guard would check one value and Gradio (FastAPI takes the last) use
    the other: `?session_hash=mine&session_hash=yours` read someone else's stream. So a
    repeated parameter raises `RepeatedParameter` and the request is refused.
    """
    query = scope.get("query_string", b"").decode("latin-1")
    values = parse_qs(query, keep_blank_values=True).get(name)
    if values and len(values) > 1:
        raise RepeatedParameter(name)
    return values[0] if values else None


def has_query(scope: Scope, name: str) -> bool:
    """Whether the query string names `name` at all (even with an empty value)."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    return name in query


def without_compression(scope: Scope) -> Scope:
    """The scope without `accept-encoding`: Gradio then answers uncompressed, so the guard
    can read what it forwards (Gradio compresses with brotli when asked to)."""
    headers = [(k, v) for k, v in scope["headers"] if k != b"accept-encoding"]
    return {**scope, "headers": headers}


def json_body(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None (Gradio then refuses it itself)."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def file_paths(value: Any, only_file_data: bool) -> Iterator[str]:
    """Every `path` of a file reference anywhere in `value` (a decoded JSON value).

    `only_file_data`: only dicts marked as Gradio FileData count (for outputs, so that text
    that merely mentions a path never grants it); otherwise any dict with a string `path`
    (for inputs: whatever Gradio might treat as a file is checked).
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            path = item.get("path")
            meta = item.get("meta")
            marked = isinstance(meta, dict) and meta.get("_type") == FILE_DATA_TYPE
            if isinstance(path, str) and (marked or not only_file_data):
                yield path
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def sse_messages(chunk: bytes) -> Iterator[Any]:
    """The JSON messages in one chunk of Gradio's `queue/data` stream (`data: {...}` lines)."""
    for line in chunk.split(b"\n"):
        if line.startswith(b"data:"):
            try:
                yield json.loads(line[5:])
            except ValueError:
                continue  # not JSON ("ALIVE") or split across chunks: carries no file
