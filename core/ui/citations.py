"""Checking a source: under the chat, each source of the last answer opens its passage.

The choices are the sources of the latest answer of the open conversation, read from the
database (the caller's own conversation in this team: core/chat/conversations.py), never from
the page; a choice names that answer's message and the source's number. Opening one shows
the passage it cites (core/knowledge/passages.py: the PDF page, the section, the CSV rows)
with the cited chunk set apart and the question's words highlighted. The team is checked
(`read_documents`) and the document must be in its registry: another team's document is
`NotFound`, with nothing of it shown. Every opening is audited (`ui_open_source`).

The HTML is built from escaped text only: `<mark>`, `<blockquote>`, `<p>`, `<br>`,
`<strong>`, `<em>` and no attribute, so nothing in a document can load or link anything.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any

import gradio as gr

from core.chat import conversations as conv
from core.errors import InvalidRequest
from core.knowledge.passages import Passage, cited_passage
from core.services import Services
from core.ui.render import inline_text
from core.ui.session import ui_call

# Words too common to be worth highlighting.
_STOPWORDS = frozenset(
    [
        "the",
        "and",
        "for",
        "are",
        "was",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "whom",
        "why",
        "how",
        "does",
        "did",
        "do",
        "with",
        "from",
        "that",
        "this",
        "these",
        "those",
        "about",
        "into",
        "over",
        "under",
        "than",
        "then",
        "there",
        "their",
        "them",
        "they",
        "you",
        "your",
        "our",
        "its",
        "it's",
        "has",
        "have",
        "had",
        "can",
        "could",
        "would",
        "should",
        "will",
        "not",
        "but",
        "any",
        "all",
        "per",
    ]
)
_WORD = re.compile(r"\w{3,}", re.UNICODE)
HINT = "Choose a source of the last answer to read the passage it cites."


def question_terms(question: str) -> list[str]:
    """The question's words worth highlighting (3+ letters, not a stopword), longest first."""
    words = {w.lower() for w in _WORD.findall(question or "")} - _STOPWORDS
    return sorted(words, key=lambda w: (-len(w), w))


def _marked(text: str, terms: list[str]) -> str:
    """`text` escaped, each whole-word match of `terms` (a plural too) in `<mark>`."""
    if not terms:
        return _lines(html.escape(text))
    pattern = re.compile(r"\b(" + "|".join(re.escape(t) for t in terms) + r")(s|es)?\b", re.I)
    out, last = [], 0
    for match in pattern.finditer(text):
        out.append(html.escape(text[last : match.start()]))
        out.append(f"<mark>{html.escape(match.group(0))}</mark>")
        last = match.end()
    out.append(html.escape(text[last:]))
    return _lines("".join(out))


def _lines(escaped: str) -> str:
    return escaped.strip().replace("\n", "<br>")


def passage_html(passage: Passage, question: str) -> str:
    """The passage as inert HTML: where it is, the text, the cited chunk as a block quote."""
    terms = question_terms(question)
    text = passage.text
    before, cited = text[: passage.cited_start], text[passage.cited_start : passage.cited_end]
    after = text[passage.cited_end :]
    where = inline_text(passage.location, 80)
    parts = [f"<p><strong>{inline_text(passage.filename, 160)}</strong> · {where}</p>"]
    if passage.cut_before:
        parts.append("<p><em>…</em></p>")
    if before.strip():
        parts.append(f"<p>{_marked(before, terms)}</p>")
    parts.append(f"<blockquote><p>{_marked(cited, terms)}</p></blockquote>")
    if after.strip():
        parts.append(f"<p>{_marked(after, terms)}</p>")
    if passage.cut_after:
        parts.append("<p><em>…</em></p>")
    return f'<div id="source-passage-text">{"".join(parts)}</div>'


def _latest_answer(
    services: Services, subject: str, team: str, conversation_id: str
) -> tuple[conv.StoredMessage | None, str]:
    """The conversation's last answer with sources, and the question it answered."""
    db = services.settings.resolved_database_url
    messages = conv.get_conversation(db, subject, team, conversation_id).messages
    question = ""
    answer: tuple[conv.StoredMessage | None, str] = (None, "")
    for message in messages:
        if message.role == "user":
            question = message.content
        elif message.sources:
            answer = (message, question)
    return answer


def source_choices(
    services: Services, conversation_id: str | None, team: str | None, request: gr.Request | None
) -> Any:
    """The dropdown of the last answer's sources (empty without a conversation)."""
    with ui_call(services, request) as call:
        if not conversation_id or not team:
            return gr.update(choices=[], value=None)
        call.check(team, "chat")
        answer, _ = _latest_answer(services, call.principal.subject, team, conversation_id)
        if answer is None:
            return gr.update(choices=[], value=None)
        choices = [
            (f"{n}. {s.get('filename', '?')} · {s.get('location', '')}"[:200], f"{answer.id}:{n}")
            for n, s in enumerate(answer.sources, 1)
        ]
        return gr.update(choices=choices, value=None)


def open_source(
    services: Services,
    choice: str | None,
    conversation_id: str | None,
    team: str | None,
    request: gr.Request | None,
) -> str:
    """The passage of one source of the open conversation's last answer, highlighted."""
    with ui_call(services, request) as call:
        if not choice or not conversation_id or not team:
            return f"<p>{HINT}</p>"
        call.check(team, "read_documents")
        message_id, _, number = str(choice).partition(":")
        answer, question = _latest_answer(services, call.principal.subject, team, conversation_id)
        if answer is None or str(answer.id) != message_id or not number.isdigit():
            raise InvalidRequest("This source is not one of the last answer's; ask again.")
        index = int(number) - 1
        if not 0 <= index < len(answer.sources):
            raise InvalidRequest("This source is not one of the last answer's; ask again.")
        source = answer.sources[index]
        tenant = services.tenants.get(team)
        passage = cited_passage(
            tenant, services.knowledge.vector_store(tenant),
            services.settings.resolved_database_url, str(source.get("document_id", "")),
            str(source.get("location", "")), str(source.get("snippet", "")),
        )  # fmt: skip
        call.record_ok("ui_open_source", team, f"{passage.document_id} {passage.location}"[:500])
        return passage_html(passage, question)


@dataclass
class CitationView:
    """The source picker and the passage it opens."""

    pick: gr.Dropdown
    passage: gr.HTML


def build_citation_panel() -> CitationView:
    """Lay out the panel (inside the chat column)."""
    with gr.Accordion("Check a source", open=False, elem_id="source-check"):
        pick = gr.Dropdown(label="Source of the last answer", choices=[], elem_id="source-pick")
        passage = gr.HTML(f"<p>{HINT}</p>", elem_id="source-passage")
    return CitationView(pick, passage)


def wire_citations(
    services: Services,
    team: gr.Dropdown,
    conversation_id: gr.State,
    answers: list[Any],
    view: CitationView,
) -> None:
    """After each answer and on opening a conversation, list its sources; open the chosen."""

    def choices(cid: str | None, team_id: str | None, request: gr.Request) -> Any:
        return source_choices(services, cid, team_id, request)

    def show(choice: str | None, cid: str | None, team_id: str | None, request: gr.Request) -> str:
        return open_source(services, choice, cid, team_id, request)

    private: dict[str, Any] = {"api_visibility": "private"}
    for event, name in zip(answers, ("sources_after_send", "sources_after_btn"), strict=True):
        event.then(choices, [conversation_id, team], [view.pick], api_name=name, **private)
    conversation_id.change(
        choices, [conversation_id, team], [view.pick], api_name="sources_list", **private
    )
    view.pick.input(
        show, [view.pick, conversation_id, team], [view.passage], api_name="source_open",
        **private,
    )  # fmt: skip
