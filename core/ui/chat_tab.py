"""The Chat tab: streamed answers with their sources, a Stop button, saved conversations.

History comes from the database (core/chat/conversations.py), never from the page: the Chatbot's
value is output only. The conversation id and the team the page sends are re-checked against
the signed-in user on every call: a conversation id of another user or team is `NotFound`.
Under the chat, one line says what is left of the token budgets that apply (the person's and
the team's; core/budgets), refreshed after each answer and on a team switch. Thumbs on each
answer, a comment and the conversation's export are core/ui/feedback.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import asdict, dataclass
from typing import Any

import gradio as gr

from core.audit.auditor import caller_of
from core.chat import conversations as conv
from core.chat.request import ChatRequest
from core.chat.turn import ChatTurn, start_chat_turn
from core.engine.model import serves_bundled_model
from core.errors import InvalidRequest, TenantLLMError
from core.identity import Principal
from core.services import Services
from core.ui.citations import build_citation_panel, wire_citations
from core.ui.feedback import FeedbackView, build_comment_row, build_export_controls, wire_feedback
from core.ui.render import answer_html, inline_text, sanitize_html
from core.ui.session import shown_error, ui_call

log = logging.getLogger(__name__)

# Shown above the chat while the bundled 135M model serves: its answers are a demo, not a
# measure of the product (bench/answer_quality.py), and the person should know the way out.
DEMO_MODEL_NOTICE = (
    "**Demo model.** Answers come from SmolLM2-135M, a small model bundled so that tenantllm "
    "runs on a laptop: expect short answers that are sometimes wrong. To connect a real model, "
    "set `TENANTLLM_MODEL` to its folder or Hugging Face name, or point "
    "`TENANTLLM_ENGINE_BACKEND=openai` and `TENANTLLM_ENGINE_URL` at a vLLM server "
    '(README, "Use a real model").'
)
STOPPED_NOTE = "\n\n*(stopped)*"
IDLE_LABEL = "Assistant"
BUSY_LABEL = "Assistant · answering…"

# What a chat handler yields: (chatbot, conversation id, conversation list, textbox).
Updates = AsyncGenerator[tuple[Any, ...], None]


def sources_html(sources: list[dict[str, Any]]) -> str:
    """The sources under an answer: document name, page/section, a snippet (all escaped)."""
    if not sources:
        return "<p>No document of this team matched; the answer is from the model alone.</p>"
    blocks = []
    for i, src in enumerate(sources, 1):
        where = f" · {inline_text(src.get('location', ''), 80)}" if src.get("location") else ""
        block = f"<p><strong>{i}. {inline_text(src.get('filename', '?'), 120)}</strong>{where}</p>"
        snippet = inline_text(src.get("snippet", ""), 280)
        blocks.append(f"{block}<blockquote><p>{snippet}</p></blockquote>" if snippet else block)
    # The same sanitiser as answers: one safe path for everything the chat shows.
    return sanitize_html("\n".join(blocks))


def to_chat_messages(messages: list[conv.StoredMessage]) -> list[dict[str, Any]]:
    """Stored messages as Chatbot messages: inert HTML, sources as a collapsible block."""
    shown: list[dict[str, Any]] = []
    for message in messages:
        shown.append({"role": message.role, "content": answer_html(message.content)})
        if message.role == "assistant":
            shown.append(_sources_message(message.sources))
    return shown


def _sources_message(sources: list[dict[str, Any]]) -> dict[str, Any]:
    title = f"Sources ({len(sources)})" if sources else "Sources (none)"
    return {
        "role": "assistant",
        "content": sources_html(sources),
        # No "done" status: Gradio then shows the block open; a click folds it away.
        "metadata": {"title": title},
    }


def _busy(messages: list[dict[str, Any]]) -> Any:
    # The label says an answer is on its way; it also tells tests when a turn has ended.
    return gr.update(value=messages, label=BUSY_LABEL)


def _idle(messages: list[dict[str, Any]]) -> Any:
    return gr.update(value=messages, label=IDLE_LABEL)


def _assistant(answer: str) -> dict[str, Any]:
    return {"role": "assistant", "content": answer_html(answer)}


def _choices(services: Services, owner: str, tenant_id: str) -> list[tuple[str, str]]:
    items = conv.list_conversations(services.settings.resolved_database_url, owner, tenant_id)
    return [(c.title, c.id) for c in items]


def _history(messages: list[conv.StoredMessage]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


@dataclass(frozen=True)
class _Question:
    """A question the caller may ask in this team, with the conversation it continues."""

    principal: Principal
    team: str
    text: str
    stored: list[conv.StoredMessage]  # the conversation so far, from the database
    shown: list[dict[str, Any]]  # the same as Chatbot messages, and the question under it


def _admit(
    services: Services,
    message: str,
    team: str | None,
    conversation_id: str | None,
    request: gr.Request | None,
) -> _Question:
    """Check the question and the caller's right to ask it; load the conversation so far."""
    db = services.settings.resolved_database_url
    with ui_call(services, request) as call:
        text = (message or "").strip()
        if not text:
            raise InvalidRequest("Type a question first.")
        if not team:
            raise InvalidRequest("Choose a team first.")
        call.check(team, "chat")
        stored: list[conv.StoredMessage] = []
        if conversation_id:
            found = conv.get_conversation(db, call.principal.subject, team, conversation_id)
            stored = found.messages
    shown = [*to_chat_messages(stored), {"role": "user", "content": answer_html(text)}]
    return _Question(call.principal, team, text, stored, shown)


def _chat_request(question: _Question, request: gr.Request | None) -> ChatRequest:
    client_ip, user_agent = caller_of(request)
    return ChatRequest(
        tenant_id=question.team,
        question=question.text,
        history=_history(question.stored),
        channel="ui",
        client_ip=client_ip,
        user_agent=user_agent,
    )


async def send_message(
    services: Services,
    message: str,
    team: str | None,
    conversation_id: str | None,
    request: gr.Request | None,
) -> Updates:
    """Stream one answer; save the question and the (possibly stopped) answer afterwards.

    Yields (chatbot, conversation id, conversation list, textbox).
    """
    question = _admit(services, message, team, conversation_id, request)
    pending = [*question.shown, {"role": "assistant", "content": "…"}]
    yield _busy(pending), conversation_id, gr.update(), ""
    try:
        turn = await start_chat_turn(services, question.principal, _chat_request(question, request))
    except Exception as exc:
        if not isinstance(exc, TenantLLMError):
            log.exception("starting a chat turn failed")
        # Nothing was said: restore the chat and give the question back to edit or resend.
        yield _idle(to_chat_messages(question.stored)), conversation_id, gr.update(), message
        raise shown_error(exc) from None
    if not conversation_id:
        db = services.settings.resolved_database_url
        subject = question.principal.subject
        conversation_id = conv.create_conversation(db, subject, question.team, question.text[:60])
    # aclosing: closing this generator (Stop) closes the answer's at once, not at GC.
    async with aclosing(_answer(services, question, turn, conversation_id)) as updates:
        async for update in updates:
            yield update


async def _answer(
    services: Services, question: _Question, turn: ChatTurn, conversation_id: str
) -> Updates:
    """Stream the answer under the question; save both however the stream ends."""
    sources = [asdict(s) for s in turn.sources]
    sources_msg = _sources_message(sources)
    listed = _choices(services, question.principal.subject, question.team)
    choices = gr.update(choices=listed, value=conversation_id)
    answer, finished = "", False
    stream = turn.stream()
    try:
        async for chunk in stream:
            answer = chunk.text
            # Sources are known before the first token: shown under the answer from the start,
            # so they stay visible when the person stops the answer.
            shown = [*question.shown, _assistant(answer), sources_msg]
            yield _busy(shown), conversation_id, choices, ""
        finished = True
    except TenantLLMError as exc:
        yield _idle([*question.shown, _assistant(answer)]), conversation_id, choices, ""
        raise shown_error(exc) from None
    except Exception as exc:  # CancelledError and GeneratorExit (Stop) are not caught here
        log.exception("chat stream failed")
        raise shown_error(exc) from exc
    finally:
        # Stop cancels Gradio's task; when that lands outside our generators, Gradio only
        # closes its own wrapper, and this turn's stream would wait for the garbage collector
        # (no abort, no `cancelled` audit row). Close it now; audit a turn never streamed.
        await stream.aclose()
        turn.abandon()
        saved = answer + ("" if finished else STOPPED_NOTE)
        _save(services, question, conversation_id, saved, sources)
    yield _idle([*question.shown, _assistant(answer), sources_msg]), conversation_id, choices, ""


def _save(
    services: Services,
    question: _Question,
    conversation_id: str,
    answer: str,
    sources: list[dict[str, Any]],
) -> None:
    exchange = [
        conv.StoredMessage("user", question.text),
        conv.StoredMessage("assistant", answer, sources),
    ]
    db = services.settings.resolved_database_url
    conv.append_messages(db, question.principal.subject, question.team, conversation_id, exchange)


def allowance_line(services: Services, team: str | None, request: gr.Request | None) -> str:
    """`You: 9,000 tokens left today · Sales: ...`: the budgets left to this user in `team`.

    Empty when no budget applies (or no team is chosen).
    """
    with ui_call(services, request) as call:
        if not team:
            return ""
        call.check(team, "chat")
        tenant = services.tenants.get(team)
        allowance = services.budgets.allowance(
            tenant.id, call.principal.subject, team_name=tenant.display_name
        )
    return allowance.summary()


def open_conversation(
    services: Services, conversation_id: str | None, team: str | None, request: gr.Request | None
) -> tuple[Any, ...]:
    """Show a saved conversation of this user in this team."""
    with ui_call(services, request) as call:
        if not conversation_id or not team:
            return [], None, ""
        call.check(team, "chat")
        found = conv.get_conversation(
            services.settings.resolved_database_url, call.principal.subject, team, conversation_id
        )
        return to_chat_messages(found.messages), found.id, found.title


def list_for_team(
    services: Services, team: str | None, request: gr.Request | None
) -> tuple[Any, ...]:
    """The conversation list of the chosen team (and an empty chat): used on team switch."""
    with ui_call(services, request) as call:
        if not team:
            return gr.update(choices=[], value=None), [], None, ""
        call.check(team, "chat")
        choices = _choices(services, call.principal.subject, team)
        return gr.update(choices=choices, value=None), [], None, ""


def rename_current(
    services: Services,
    conversation_id: str | None,
    team: str | None,
    title: str,
    request: gr.Request | None,
) -> Any:
    """Rename the open conversation."""
    with ui_call(services, request) as call:
        if not conversation_id or not team:
            raise InvalidRequest("Open a conversation first.")
        call.check(team, "chat")
        db = services.settings.resolved_database_url
        conv.rename_conversation(db, call.principal.subject, team, conversation_id, title)
        choices = _choices(services, call.principal.subject, team)
        return gr.update(choices=choices, value=conversation_id)


def delete_current(
    services: Services, conversation_id: str | None, team: str | None, request: gr.Request | None
) -> tuple[Any, ...]:
    """Delete the open conversation; the chat is emptied."""
    with ui_call(services, request) as call:
        if not conversation_id or not team:
            raise InvalidRequest("Open a conversation first.")
        call.check(team, "chat")
        db = services.settings.resolved_database_url
        conv.delete_conversation(db, call.principal.subject, team, conversation_id)
        choices = _choices(services, call.principal.subject, team)
        gr.Info("Conversation deleted.")
        return gr.update(choices=choices, value=None), [], None, ""


@dataclass
class ChatView:
    """The Chat tab's components, for wiring."""

    conversation_id: gr.State
    conv_list: gr.Radio
    title_box: gr.Textbox
    chatbot: gr.Chatbot
    textbox: gr.Textbox
    new_btn: gr.Button
    rename_btn: gr.Button
    delete_btn: gr.Button
    send_btn: gr.Button
    stop_btn: gr.Button
    allowance: gr.Markdown


def build_chat_tab(services: Services, team: gr.Dropdown) -> None:
    """Lay out the Chat tab and wire its events (call inside a `gr.Tab`)."""
    conversation_id = gr.State(None)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=220, elem_classes="tl-sidebar"):
            new_btn, conv_list, title_box, rename_btn, delete_btn = _sidebar()
            exports = build_export_controls()
        with gr.Column(scale=4):
            if serves_bundled_model(services.settings):
                gr.Markdown(DEMO_MODEL_NOTICE, elem_id="demo-model-notice")
            chatbot, textbox, send_btn, stop_btn = _conversation()
            comments = build_comment_row()
            citations = build_citation_panel()  # each source opens its passage
            allowance = gr.Markdown("", elem_id="chat-allowance", sanitize_html=True)
    view = ChatView(
        conversation_id, conv_list, title_box, chatbot, textbox,
        new_btn, rename_btn, delete_btn, send_btn, stop_btn, allowance,
    )  # fmt: skip
    answers = _wire(services, team, view)
    # After the tab's own events, so their numbers (fn_index) stay as they were.
    wire_feedback(services, team, chatbot, conversation_id, FeedbackView(*comments, *exports))
    wire_citations(services, team, conversation_id, answers, citations)


def _sidebar() -> tuple[gr.Button, gr.Radio, gr.Textbox, gr.Button, gr.Button]:
    new_btn = gr.Button("New conversation", size="sm", elem_id="conv-new")
    conv_list = gr.Radio(label="Your conversations", choices=[], elem_id="conv-list")
    with gr.Accordion("Rename or delete", open=False, elem_id="conv-manage"):
        title_box = gr.Textbox(label="Title", max_length=80, elem_id="conv-title")
        with gr.Row():
            rename_btn = gr.Button("Rename", size="sm", elem_id="conv-rename")
            delete_btn = gr.Button("Delete", size="sm", variant="stop", elem_id="conv-delete")
    return new_btn, conv_list, title_box, rename_btn, delete_btn


def _conversation() -> tuple[gr.Chatbot, gr.Textbox, gr.Button, gr.Button]:
    chatbot = gr.Chatbot(
        label=IDLE_LABEL,
        elem_id="chatbot",
        height="60vh",
        sanitize_html=True,
        allow_tags=False,
        # Messages are already inert HTML (core/ui/render.py): the browser must not
        # parse them as markdown again, or escaped markdown would become live.
        render_markdown=False,
        feedback_options=("Like", "Dislike"),  # rated by core/ui/feedback.py
        # No copy button: it copies a message's raw value, which is our HTML.
        buttons=[],
        placeholder="Ask a question about your team's documents.",
    )
    with gr.Row(elem_classes="tl-composer"):
        textbox = gr.Textbox(
            show_label=False,
            placeholder="Ask a question…",
            scale=6,
            lines=1,
            max_lines=6,
            elem_id="chat-input",
        )
        send_btn = gr.Button("Send", variant="primary", scale=1, min_width=80)
        stop_btn = gr.Button("Stop", variant="stop", scale=1, min_width=80, elem_id="stop")
    return chatbot, textbox, send_btn, stop_btn


def _wire(services: Services, team: gr.Dropdown, v: ChatView) -> list[Any]:
    # Handlers close over `services`; everything user-related is re-read from the request.
    # The order of the events is the order Gradio numbers them in (fn_index): keep it.
    send, stop = _answer_handlers(services)
    answers = _wire_answers(send, stop, team, v)
    _wire_conversations(services, team, v)
    _wire_allowance(services, team, v, answers)  # last: it adds events, numbered after these
    return answers  # the two answer events, for what runs after each answer


def _answer_handlers(
    services: Services,
) -> tuple[Callable[..., Updates], Callable[[gr.Request], Awaitable[Any]]]:
    """The Send and Stop handlers of one page, sharing the answers in flight."""
    # This page's answers in flight, by Gradio session (bound to one principal by the guard).
    running: dict[str, tuple[Updates, asyncio.Event]] = {}

    async def send(
        message: str, team_id: str | None, cid: str | None, request: gr.Request
    ) -> Updates:
        # aclosing: closing this generator (Stop) closes the chat turn's at once, not at GC.
        key = getattr(request, "session_hash", None) or ""  # None: called outside Gradio
        stopped = asyncio.Event()
        async with aclosing(send_message(services, message, team_id, cid, request)) as updates:
            running[key] = (updates, stopped)
            try:
                async for update in updates:
                    if stopped.is_set():
                        break  # leaving the block closes the answer: engine abort, audit row
                    yield update
            finally:
                if running.get(key, (None,))[0] is updates:
                    del running[key]

    async def stop(request: gr.Request) -> Any:
        # Gradio's cancel only reaches our generators when it lands inside them; landing
        # between two updates it drops them, and the engine request would run on until the
        # garbage collector closes them. So Stop ends this session's answer itself: closed
        # at once if it waits between two updates, else at its next update.
        answer = running.pop(request.session_hash or "", None)
        if answer is not None:
            updates, stopped = answer
            stopped.set()
            with contextlib.suppress(RuntimeError):  # running: it stops at its next update
                await updates.aclose()
        return gr.update(label=IDLE_LABEL)

    return send, stop


def _wire_answers(
    send: Callable[..., Updates],
    stop: Callable[[gr.Request], Awaitable[Any]],
    team: gr.Dropdown,
    v: ChatView,
) -> list[Any]:
    private: dict[str, Any] = {"api_visibility": "private"}
    # The engine and the per-tenant caps limit generation; the UI must not serialize users.
    chat_io = (
        [v.textbox, team, v.conversation_id],
        [v.chatbot, v.conversation_id, v.conv_list, v.textbox],
    )
    events: list[Any] = [
        v.textbox.submit(send, *chat_io, concurrency_limit=None, api_name="chat_send", **private),
        v.send_btn.click(
            send, *chat_io, concurrency_limit=None, api_name="chat_send_btn", **private
        ),
    ]
    # Cancelling the event cancels the generator, which closes the engine stream (abort).
    v.stop_btn.click(stop, None, [v.chatbot], cancels=events, api_name="chat_stop", **private)
    return events


def _wire_conversations(services: Services, team: gr.Dropdown, v: ChatView) -> None:
    def open_(cid: str | None, team_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        return open_conversation(services, cid, team_id, request)

    def switch(team_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        return list_for_team(services, team_id, request)

    def rename(cid: str | None, team_id: str | None, title: str, request: gr.Request) -> Any:
        return rename_current(services, cid, team_id, title, request)

    def delete(cid: str | None, team_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        return delete_current(services, cid, team_id, request)

    cleared = [v.conv_list, v.chatbot, v.conversation_id, v.title_box]
    private: dict[str, Any] = {"api_visibility": "private"}
    v.conv_list.input(
        open_,
        [v.conv_list, team],
        [v.chatbot, v.conversation_id, v.title_box],
        api_name="conversation_open",
        **private,
    )
    team.change(switch, [team], cleared, **private)
    v.new_btn.click(
        lambda: (gr.update(value=None), [], None, ""),
        None,
        cleared,
        api_name="conversation_new",
        **private,
    )
    v.rename_btn.click(rename, [v.conversation_id, team, v.title_box], [v.conv_list], **private)
    v.delete_btn.click(delete, [v.conversation_id, team], cleared, **private)


def _wire_allowance(services: Services, team: gr.Dropdown, v: ChatView, answers: list[Any]) -> None:
    def refresh(team_id: str | None, request: gr.Request) -> str:
        return allowance_line(services, team_id, request)

    private: dict[str, Any] = {"api_visibility": "private"}
    # `.then`: after the answer however it ended (a refusal shows what is left too).
    names = ("chat_allowance_after_send", "chat_allowance_after_btn")
    for event, name in zip(answers, names, strict=True):
        event.then(refresh, [team], [v.allowance], api_name=name, **private)
    team.change(refresh, [team], [v.allowance], api_name="chat_allowance", **private)
