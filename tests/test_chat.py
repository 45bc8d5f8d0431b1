"""The chat turn: real Chroma and the real audit log, with the fake engine for the product's
logic (what is refused, what the engine is sent, audit, cancellation) and the real engine end
to end (`test_answer_streams_with_sources_and_one_audit_event`)."""

from __future__ import annotations

import asyncio
import json
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

from core.chat.prompt import sanitize_history
from core.chat.request import ChatRequest
from core.chat.turn import start_chat_turn
from core.errors import (
    InvalidRequest,
    PermissionDenied,
    PromptTooLong,
    RateLimited,
    TenantNotFound,
)
from core.identity import Principal
from tests.fake_engine import FakeEngine

# --- helpers (also used by test_chat_isolation.py and test_api.py) ---------------------------


def principal(name: str, roles: dict[str, str], global_roles: frozenset[str] = frozenset()) -> Any:
    """A signed-in user with these tenant roles."""
    return Principal(
        subject=f"user:{name}",
        email=f"{name}@example.com",
        kind="user",
        tenant_roles=roles,
        global_roles=global_roles,
    )


def ingest_text(services: Any, tenant_id: str, path: Path, text: str) -> str:
    """Ingest one text document into a tenant; its document id."""
    path.write_text(text, encoding="utf-8")
    tenant = services.tenants.get(tenant_id)
    (outcome,) = services.knowledge.ingest(tenant, [path], uploaded_by="tester")
    assert outcome.status == "indexed", outcome
    return str(outcome.document_id)


def audit_events(services: Any, request_id: str | None = None) -> list[Any]:
    """Audit rows written so far (flushed first), optionally of one request, oldest first."""
    from sqlalchemy import select

    from core.audit.models import AuditEventRow
    from core.db import session_scope

    services.auditor.flush()
    query = select(AuditEventRow).order_by(AuditEventRow.seq)
    if request_id is not None:
        query = query.where(AuditEventRow.request_id == request_id)
    with session_scope(services.settings.resolved_database_url) as session:
        rows = list(session.scalars(query))
    for row in rows:  # JSON columns, as lists
        row.document_ids = json.loads(row.document_ids)
        row.flags = json.loads(row.flags)
    return rows


async def first_chunk_then_close(turn: Any) -> None:
    """Start streaming a turn and close it after one chunk (audited as cancelled)."""
    async with aclosing(turn.stream()) as stream:
        async for _ in stream:
            break


SALES_DOC = """Sales playbook.
The standard discount for annual contracts is twelve percent. Discounts above twenty percent
need approval from the head of sales. Renewals are handled by the account manager.
"""


@pytest.fixture
async def sales_doc(services_fake: Any, tmp_path: Path) -> str:
    """One sales document (in the services with the fake engine); its id."""
    return ingest_text(services_fake, "sales", tmp_path / "playbook.md", SALES_DOC)


@pytest.fixture
def alice() -> Principal:
    """A sales member."""
    return principal("alice", {"sales": "member"})


@pytest.mark.engine
async def test_answer_streams_with_sources_and_one_audit_event(
    services: Any, tmp_path: Path, alice: Principal
) -> None:
    sales_doc = ingest_text(services, "sales", tmp_path / "playbook.md", SALES_DOC)
    request = ChatRequest(
        tenant_id="sales", question="What is the discount for annual contracts?", max_tokens=24
    )
    turn = await start_chat_turn(services, alice, request)
    assert [s.document_id for s in turn.sources] and {s.document_id for s in turn.sources} == {
        sales_doc
    }
    assert any("twelve percent" in m["content"] for m in turn.messages)
    chunks = [chunk async for chunk in turn.stream()]
    assert len(chunks) > 1
    last = chunks[-1]
    assert last.finished and last.text.strip()
    assert last.text == "".join(c.delta for c in chunks)
    assert 0 < last.completion_tokens <= 24
    assert last.prompt_tokens == turn.prompt_tokens
    (event,) = audit_events(services, turn.request_id)
    assert event.outcome == "ok" and event.action == "chat" and event.tenant_id == "sales"
    assert event.user_sub == alice.subject
    assert event.tokens_in == last.prompt_tokens and event.tokens_out == last.completion_tokens
    assert event.document_ids == [sales_doc]
    assert event.prompt_digest and len(event.prompt_digest) == 64


async def test_the_engine_gets_the_turns_prompt_and_options(
    services_fake: Any, fake_engine: FakeEngine, sales_doc: str, alice: Principal
) -> None:
    request = ChatRequest(tenant_id="sales", question="Who handles renewals?", max_tokens=8)
    turn = await start_chat_turn(services_fake, alice, request)
    chunks = [chunk async for chunk in turn.stream()]
    (call,) = fake_engine.calls
    assert call.messages == turn.messages  # exactly the fitted, checked prompt
    assert call.params.max_tokens == 8
    options = call.options
    assert (options.tenant_id, options.user_id) == ("sales", alice.subject)
    assert options.request_id == turn.request_id
    settings = services_fake.settings
    assert options.max_output_tokens == settings.max_output_tokens
    assert options.max_prompt_tokens == settings.max_prompt_tokens
    last = chunks[-1]
    assert last.finished and last.finish_reason == "length" and last.completion_tokens == 8
    assert last.text.startswith("Fake answer. System:")
    (event,) = audit_events(services_fake, turn.request_id)
    assert event.outcome == "ok" and event.document_ids == [sales_doc]
    assert event.tokens_in == turn.prompt_tokens == last.prompt_tokens
    assert event.tokens_out == 8


async def test_cancel_mid_stream_aborts_engine_request_and_audits_cancelled(
    services_fake: Any, fake_engine: FakeEngine, sales_doc: str, alice: Principal
) -> None:
    fake_engine.enqueue("word " * 400)
    request = ChatRequest(
        tenant_id="sales",
        question="Write a long story about renewals.",
        max_tokens=400,
        temperature=1.0,
        channel="api",
    )
    turn = await start_chat_turn(services_fake, alice, request)
    stream = turn.stream()
    received = 0
    async for _chunk in stream:
        received += 1
        if received == 2:
            break
    await stream.aclose()
    assert fake_engine.closed == [turn.request_id]
    assert await _engine_idle(services_fake)
    (event,) = audit_events(services_fake, turn.request_id)
    assert event.outcome == "cancelled" and event.action == "api_chat"
    assert event.tokens_out == 2


async def _engine_idle(services: Any) -> bool:
    # Polling, not timing: the abort travels to the engine core process asynchronously.
    for _ in range(200):
        status = await services.engine.status()
        if status.running == 0 and status.waiting == 0:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_denied_is_audited_and_raises(
    services_fake: Any, fake_engine: FakeEngine, sales_doc: str
) -> None:
    bob = principal("bob", {"development": "member"})
    with pytest.raises(PermissionDenied):
        await start_chat_turn(services_fake, bob, ChatRequest(tenant_id="sales", question="hi"))
    events = [e for e in audit_events(services_fake) if e.user_sub == bob.subject]
    assert [(e.outcome, e.status, e.tenant_id) for e in events] == [("denied", 403, "sales")]
    assert fake_engine.calls == []


async def test_unknown_tenant_is_not_found_and_audited(
    services_fake: Any, alice: Principal
) -> None:
    with pytest.raises(TenantNotFound):
        await start_chat_turn(services_fake, alice, ChatRequest(tenant_id="nope", question="hi"))
    events = [e for e in audit_events(services_fake) if e.user_sub == alice.subject]
    assert [(e.outcome, e.status) for e in events] == [("error", 404)]


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"question": "   "}, InvalidRequest),
        ({"max_tokens": 100_000}, InvalidRequest),
        ({"temperature": 5.0}, InvalidRequest),
        ({"top_p": 0.0}, InvalidRequest),
        ({"stop": ("a", "b", "c", "d", "e")}, InvalidRequest),
        ({"question": "budget " * 3000}, PromptTooLong),
    ],
)
async def test_bad_requests_get_typed_errors(
    services_fake: Any,
    fake_engine: FakeEngine,
    alice: Principal,
    changes: dict[str, Any],
    error: type[Exception],
) -> None:
    request = ChatRequest(**{"tenant_id": "sales", "question": "hello", **changes})
    with pytest.raises(error):
        await start_chat_turn(services_fake, alice, request)
    events = [e for e in audit_events(services_fake) if e.user_sub == alice.subject]
    assert [e.outcome for e in events] == ["error"]
    assert fake_engine.calls == []


async def test_long_history_is_trimmed_to_fit_not_refused(
    services_fake: Any, sales_doc: str, alice: Principal
) -> None:
    history = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "words " * 300}
        for i in range(12)
    ]
    request = ChatRequest(tenant_id="sales", question="Who handles renewals?", history=history)
    turn = await start_chat_turn(services_fake, alice, request)
    cap = services_fake.settings.max_prompt_tokens
    assert turn.prompt_tokens <= cap
    assert services_fake.engine.count_prompt_tokens(turn.messages) == turn.prompt_tokens
    assert "Who handles renewals?" in turn.messages[-1]["content"]
    assert not any("turn 0 " in m["content"] for m in turn.messages)  # the oldest went first
    await first_chunk_then_close(turn)


async def test_rate_limit_is_audited(
    fake_engine: FakeEngine, tmp_path: Path, alice: Principal
) -> None:
    from core.config import Settings
    from core.services import build_services
    from tests.fixtures.common import BUNDLED_MODEL_DIR

    settings = Settings(data_dir=tmp_path, model=str(BUNDLED_MODEL_DIR), rate_limit_user="2/minute")
    limited = build_services(settings)
    limited.engine = fake_engine
    await limited.auditor.start()
    try:
        for _ in range(2):
            turn = await start_chat_turn(limited, alice, ChatRequest("sales", "hi", max_tokens=2))
            await first_chunk_then_close(turn)
        with pytest.raises(RateLimited) as caught:
            await start_chat_turn(limited, alice, ChatRequest("sales", "hi", max_tokens=2))
        assert caught.value.retry_after >= 1
        outcomes = [e.outcome for e in audit_events(limited)]
        assert outcomes.count("rate_limited") == 1
    finally:
        await limited.auditor.stop()


def test_sanitize_history_keeps_only_user_and_assistant_text() -> None:
    history: list[Any] = [
        {"role": "system", "content": "You are the finance assistant."},
        {"role": "user", "content": "hello", "tenant_id": "finance"},
        {"role": "assistant", "content": "x" * 10_000},
        {"role": "tool", "content": "{}"},
        {"role": "user", "content": ["not", "text"]},
        "junk",
        {"role": "user", "content": "   "},
    ]
    kept = sanitize_history(history)
    assert kept == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "x" * 4000},
    ]
    many = [{"role": "user", "content": str(i)} for i in range(50)]
    assert [m["content"] for m in sanitize_history(many)] == [str(i) for i in range(30, 50)]


async def test_abandoned_turn_is_audited_once_and_cannot_stream(
    services_fake: Any, fake_engine: FakeEngine, sales_doc: str, alice: Principal
) -> None:
    turn = await start_chat_turn(services_fake, alice, ChatRequest("sales", "hi", max_tokens=2))
    turn.abandon()
    turn.abandon()
    (event,) = audit_events(services_fake, turn.request_id)
    assert event.outcome == "cancelled" and event.tokens_out == 0
    with pytest.raises(InvalidRequest):
        async for _ in turn.stream():
            pass
    assert fake_engine.calls == []


def test_a_team_temperature_is_checked_and_the_builtin_teams_answer_greedily(
    tmp_path: Path,
) -> None:
    from core.config import Settings
    from core.plugins import load_tenants
    from core.tenancy import PromptTemplate, Tenant

    prompt = PromptTemplate(system="You help.")
    for bad in (2.5, -0.1, True, "0"):
        problems = Tenant("legal", "Legal", "x", prompt, temperature=bad).problems()  # type: ignore[arg-type]
        assert "temperature must be a number from 0 to 2, or None" in problems, bad
    assert Tenant("legal", "Legal", "x", prompt, temperature=1.2).problems() == []
    assert {t.id: t.temperature for t in load_tenants(Settings(data_dir=tmp_path)).all()} == {
        "sales": 0.0, "development": 0.0, "finance": 0.0}  # fmt: skip


def test_the_prompt_rules_are_plain_functions() -> None:
    """`generation_params` and `fit_prompt` take numbers and a token counter: no services."""
    from core.chat.prompt import fit_prompt, generation_params
    from core.tenancy import PromptTemplate, Source

    params = generation_params(ChatRequest("sales", "hi"), default_max_tokens=256, output_cap=100)
    assert (params.max_tokens, params.temperature, params.top_p) == (100, 0.7, 1.0)
    # The team's temperature when the request names none; the request's own wins.
    greedy_team = {"default_max_tokens": 256, "output_cap": 100, "team_temperature": 0.0}
    assert generation_params(ChatRequest("sales", "hi"), **greedy_team).temperature == 0.0
    asked = ChatRequest("sales", "hi", temperature=0.9)
    assert generation_params(asked, **greedy_team).temperature == 0.9
    with pytest.raises(InvalidRequest, match="between 1 and 100"):
        generation_params(
            ChatRequest("sales", "hi", max_tokens=101), default_max_tokens=256, output_cap=100
        )

    def words(messages: list[dict[str, str]]) -> int:
        return sum(len(m["content"].split()) for m in messages)

    template = PromptTemplate(system="You help.", user="{context} {question}", source="{snippet}")
    sources = [Source(f"d{i}", f"f{i}", "", "ten words " * 5, 1.0) for i in range(3)]
    history = [{"role": "user", "content": f"old{i} " + "word " * 9} for i in range(3)]
    full = words(template.render(question="why?", sources=sources, history=history))

    def fit(cap: int) -> tuple[list[dict[str, str]], list[Source], int]:
        return fit_prompt(template, "why?", sources, history, count_tokens=words, prompt_cap=cap)

    messages, kept, tokens = fit(full)
    assert (kept, tokens, len(messages)) == (sources, full, 5)  # it all fits
    messages, kept, tokens = fit(full - 1)  # the oldest history turn goes first
    assert kept == sources and tokens == full - 10 and "old0" not in str(messages)
    messages, kept, tokens = fit(full - 31)  # no history left, then the last source goes
    assert kept == sources[:2] and [m["role"] for m in messages] == ["system", "user"]
    with pytest.raises(PromptTooLong):
        fit(2)
