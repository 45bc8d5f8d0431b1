"""The Stop button's path, step by step: Gradio cancel -> our generators -> engine abort -> audit.

Gradio's Stop (`cancels=`) cancels the event's task and then closes the generator it holds
(its own wrapper around our `send`). Where the cancellation lands decides what our code sees:
inside our generators (waiting for a token) it is a CancelledError; anywhere else (Gradio
postprocessing an update in a thread) only `aclose()` of the generator Gradio holds. Each
case must abort the engine request and write the turn's one `cancelled` audit row at once,
not whenever the garbage collector gets to a generator left suspended.

Closing the handler mid-answer runs on the real engine (the abort reaches vLLM's engine
core); the other paths are the product's own and run on the fake engine.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from core.chat.request import ChatRequest
from core.chat.turn import start_chat_turn
from tests.fake_engine import FakeEngine
from tests.test_chat import audit_events, principal

LONG = "Write a very long and detailed story about renewals, chapter by chapter."


@pytest.fixture
def alice(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A sales member, who is the signed-in user of every Gradio call of these tests."""
    member = principal("alice", {"sales": "member"})
    monkeypatch.setattr("core.ui.session.principal_of", lambda request: member)
    return member


@pytest.fixture
def long_answers(fake_engine: FakeEngine) -> FakeEngine:
    """The fake engine answering with a long story, a token every few milliseconds."""
    fake_engine.token_delay_s = 0.005
    fake_engine.enqueue(*["chapter " * 400] * 4)
    return fake_engine


def _chat_send(services: Any) -> Any:
    """The Chat tab's real `send` handler, as Gradio gets it from our Blocks."""
    import gradio as gr

    from core.ui.chat_tab import build_chat_tab

    with gr.Blocks() as blocks:
        team = gr.Dropdown(choices=["sales"], value="sales")
        build_chat_tab(services, team)
    (fn,) = [f.fn for f in blocks.fns.values() if f.api_name == "chat_send"]
    return fn


def _chat_rows(services: Any, outcome: str | None = None) -> list[Any]:
    rows = [r for r in audit_events(services) if r.action == "chat"]
    return [r for r in rows if outcome is None or r.outcome == outcome]


async def _engine_idle(services: Any) -> bool:
    for _ in range(400):  # polling, not timing: the abort reaches the engine core process later
        status = await services.engine.status()
        if status.running == 0 and status.waiting == 0:
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.mark.engine
async def test_closing_the_handler_mid_answer_aborts_and_audits_at_once(
    services: Any, alice: Any
) -> None:
    """Gradio's `aclose()` of the handler while it waits at a `yield` (between two chunks)."""
    send = _chat_send(services)(LONG, "sales", None, None)
    answered = 0
    async for update in send:
        chatbot = update[0]["value"]
        if chatbot[-1]["role"] == "assistant" and len(chatbot) > 2:
            answered += 1  # a streamed chunk (the first update is the "…" placeholder)
        if answered == 2:
            break
    assert answered == 2, "the answer was over before it could be stopped"
    await send.aclose()
    # No await in between: the row must be queued by aclose() itself, not by a finalizer
    # that runs on a later turn of the event loop (or never, if a cycle holds the generator).
    (row,) = _chat_rows(services)
    assert row.outcome == "cancelled" and row.user_sub == alice.subject
    assert 0 < row.tokens_out < 256
    assert await _engine_idle(services), "the engine request was not aborted"


async def test_stop_during_retrieval_audits_cancelled(
    services_fake: Any, fake_engine: FakeEngine, alice: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stop before the first token: the task is cancelled while the turn is being prepared."""
    services = services_fake
    entered, release = threading.Event(), threading.Event()
    real = services.knowledge.retrieve

    def slow_retrieve(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(services.knowledge, "retrieve", slow_retrieve)
    request = ChatRequest(tenant_id="sales", question=LONG)
    task = asyncio.create_task(start_chat_turn(services, alice, request))
    try:
        assert await asyncio.to_thread(entered.wait, 60)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        release.set()
    (row,) = _chat_rows(services)
    assert row.outcome == "cancelled" and row.status == 499
    assert fake_engine.calls == []  # nothing reached the engine


async def test_cancel_while_waiting_for_a_token_aborts_and_audits(
    services_fake: Any, long_answers: FakeEngine, alice: Any
) -> None:
    """The usual case: the cancellation lands inside our generators, awaiting the engine."""
    services = services_fake
    send = _chat_send(services)(LONG, "sales", None, None)
    seen = asyncio.Event()

    async def consume() -> None:
        async for update in send:
            chatbot = update[0]["value"]
            if chatbot[-1]["role"] == "assistant" and len(chatbot) > 2:
                seen.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(seen.wait(), 300)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (row,) = _chat_rows(services)
    assert row.outcome == "cancelled"
    assert await _engine_idle(services)
    assert [call.options.request_id for call in long_answers.calls] == long_answers.closed
    assert long_answers.closed == [row.request_id]
