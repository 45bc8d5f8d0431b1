"""The Chat tab's feedback and export: thumbs on each answer, a comment, a conversation file.

The page says only which message was clicked (Gradio's `LikeData.index`, the position in the
Chatbot) and how; everything else is read again from the database for the signed-in user:
the open conversation (owner AND team, core/chat/conversations.py), the answer at that
position, its sources. So a click can only ever rate an answer of the caller's own
conversation. Each rating and comment is audited as `feedback`, with the answer's cited
document ids and chunks (document id@location); each export as `conversation_export`.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from core.audit.auditor import AuditEvent
from core.chat import conversations as conv
from core.chat import export as conv_export
from core.chat import feedback
from core.errors import InvalidRequest
from core.services import Services
from core.ui.session import UiCall, ui_call

DETAIL_CHUNKS = 20  # chunk references kept in the audit row's detail


def answer_at(messages: list[conv.StoredMessage], index: int) -> conv.StoredMessage | None:
    """The saved answer shown at Chatbot position `index` (None: not an answer).

    The inverse of chat_tab.to_chat_messages' layout: a question takes one position, an
    answer two (its text, then its sources block), so both positions of an answer rate it.
    """
    position = 0
    for message in messages:
        width = 2 if message.role == "assistant" else 1
        if position <= index < position + width:
            return message if message.role == "assistant" else None
        position += width
    return None


def _liked(data: Any) -> feedback.Rating | None:
    # Gradio sends True (Like), False (Dislike) or "" (the thumb clicked again: cleared).
    liked = getattr(data, "liked", None)
    if liked is True:
        return "up"
    if liked is False:
        return "down"
    return feedback.parse_rating(liked)


def _record(call: UiCall, team: str, rated: feedback.Feedback, what: str) -> None:
    refs = rated.chunk_refs()
    detail = f"{what} on answer {rated.message_id}; chunks: " + ", ".join(refs[:DETAIL_CHUNKS])
    call.services.auditor.record(
        AuditEvent.from_request(
            call.request,
            action="feedback",
            outcome="ok",
            principal=call.principal,
            tenant_id=team,
            document_ids=rated.document_ids,
            flags=[f"rating:{rated.rating or 'cleared'}"],
            detail=detail,
        )
    )


def rate(
    services: Services,
    conversation_id: str | None,
    team: str | None,
    data: Any,
    request: gr.Request | None,
) -> tuple[Any, ...]:
    """Store a thumb on an answer of the open conversation; show the comment box.

    Returns (rated message id, comment row update, comment box update).
    """
    with ui_call(services, request) as call:
        if not conversation_id or not team:
            raise InvalidRequest("Ask a question first: only saved answers can be rated.")
        call.check(team, "chat")
        db = services.settings.resolved_database_url
        subject = call.principal.subject
        found = conv.get_conversation(db, subject, team, conversation_id)
        index = getattr(data, "index", None)
        answer = answer_at(found.messages, index) if isinstance(index, int) else None
        if answer is None or answer.id is None:
            raise InvalidRequest("Only a saved answer can be rated: wait for it to finish.")
        rating = _liked(data)
        rated = feedback.rate_answer(db, subject, team, conversation_id, answer.id, rating)
        _record(call, team, rated, f"rated {rating}" if rating else "rating cleared")
        label = "What was wrong with this answer? (optional)" if rating == "down" else None
        shown = rating is not None
        box = gr.update(value="", label=label or "Add a comment (optional)")
        return (answer.id if shown else None), gr.update(visible=shown), box


def comment(
    services: Services,
    conversation_id: str | None,
    team: str | None,
    message_id: int | None,
    text: str,
    request: gr.Request | None,
) -> tuple[Any, ...]:
    """Attach the comment to the answer just rated; the comment row folds away."""
    with ui_call(services, request) as call:
        if not conversation_id or not team or message_id is None:
            raise InvalidRequest("Rate an answer first (thumbs up or down).")
        call.check(team, "chat")
        db = services.settings.resolved_database_url
        rated = feedback.comment_answer(
            db, call.principal.subject, team, conversation_id, int(message_id), text
        )
        _record(call, team, rated, f"comment ({len(rated.comment or '')} characters)")
        gr.Info("Thank you: your comment is saved with the answer.")
        return None, gr.update(visible=False), gr.update(value="")


def export(
    services: Services,
    conversation_id: str | None,
    team: str | None,
    fmt: str,
    request: gr.Request | None,
) -> Any:
    """The open conversation as a Markdown or JSON file, with its sources and ratings."""
    with ui_call(services, request) as call:
        if not conversation_id or not team:
            raise InvalidRequest("Open a conversation first.")
        call.check(team, "chat")
        kind = conv_export.parse_format(fmt)
        db = services.settings.resolved_database_url
        subject = call.principal.subject
        found = conv.get_conversation(db, subject, team, conversation_id)
        ratings = feedback.ratings_of(db, subject, team, conversation_id)
        out = Path(tempfile.mkdtemp(prefix="tl-conv-")) / conv_export.export_filename(found, kind)
        out.write_text(conv_export.render_export(found, kind, ratings), encoding="utf-8")
        call.record_ok("conversation_export", team, f"{kind}: {conversation_id}")
        return gr.update(value=str(out), visible=True)


@dataclass
class FeedbackView:
    """The components feedback and export add to the Chat tab."""

    rated: gr.State  # the message id just rated (the comment's target)
    comment_row: gr.Row
    comment_box: gr.Textbox
    comment_btn: gr.Button
    export_format: gr.Radio
    export_btn: gr.Button
    export_file: gr.File


def build_export_controls() -> tuple[gr.Radio, gr.Button, gr.File]:
    """The sidebar's export: format, button, the file to download (call in the sidebar)."""
    with gr.Accordion("Export", open=False, elem_id="conv-export"):
        fmt = gr.Radio(
            [("Markdown", "markdown"), ("JSON", "json")],
            value="markdown",
            show_label=False,
            elem_id="conv-export-format",
        )
        button = gr.Button("Download conversation", size="sm", elem_id="conv-export-btn")
        file = gr.File(label="Conversation", interactive=False, visible=False, elem_id="conv-file")
    return fmt, button, file


def build_comment_row() -> tuple[gr.State, gr.Row, gr.Textbox, gr.Button]:
    """The comment box shown after a thumb (call under the chat)."""
    rated = gr.State(None)
    with gr.Row(visible=False, elem_id="feedback-row") as row:
        box = gr.Textbox(
            label="Add a comment (optional)",
            max_length=feedback.COMMENT_MAX,
            scale=5,
            elem_id="feedback-comment",
        )
        button = gr.Button("Send comment", size="sm", scale=1, elem_id="feedback-send")
    return rated, row, box, button


def wire_feedback(
    services: Services,
    team: gr.Dropdown,
    chatbot: gr.Chatbot,
    conversation_id: gr.State,
    v: FeedbackView,
) -> None:
    """Wire the thumbs, the comment and the export (after the Chat tab's own events)."""

    def like(cid: str | None, team_id: str | None, data: gr.LikeData, request: gr.Request) -> Any:
        return rate(services, cid, team_id, data, request)

    def send(
        cid: str | None, team_id: str | None, mid: int | None, text: str, request: gr.Request
    ) -> Any:
        return comment(services, cid, team_id, mid, text, request)

    def download(cid: str | None, team_id: str | None, fmt: str, request: gr.Request) -> Any:
        return export(services, cid, team_id, fmt, request)

    private: dict[str, Any] = {"api_visibility": "private"}
    row_out = [v.rated, v.comment_row, v.comment_box]
    chatbot.like(like, [conversation_id, team], row_out, api_name="chat_feedback", **private)
    v.comment_btn.click(
        send,
        [conversation_id, team, v.rated, v.comment_box],
        row_out,
        api_name="chat_feedback_comment",
        **private,
    )
    v.export_btn.click(
        download,
        [conversation_id, team, v.export_format],
        [v.export_file],
        api_name="conversation_export",
        **private,
    )
