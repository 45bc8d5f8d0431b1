"""The team-safe response cache, on the real Redis: hits, the other team, uploads, sampling.

Two teams of this test run alone (ids made for the run, so their Redis keys are too; deleted
after) have the same template, so the same question gives both the very same messages: only
the key's team keeps them apart. The fake engine (tests/fake_engine.py) records every request,
so "the engine was not asked" is checked exactly. One end-to-end hit runs on the real engine.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from core.chat.request import ChatRequest
from core.chat.response_cache import CACHE_HIT_FLAG, KEY_PREFIX, cacheable
from core.chat.turn import start_chat_turn
from core.config import Settings
from core.engine.base import GenerationParams, SamplingOptions
from core.identity import Principal
from core.services import Services, build_services
from core.tenancy import PromptTemplate, Tenant, TenantRegistry
from tests.fake_engine import FakeEngine
from tests.fixtures.common import BUNDLED_MODEL_DIR
from tests.test_chat import audit_events

REDIS_URL = "redis://127.0.0.1:6379/0"
TEMPLATE = PromptTemplate(system="You answer questions about the handbook.")

pytestmark = pytest.mark.redis


class Run:
    """This test's teams, member and services."""

    def __init__(self, services: Services, teams: tuple[str, str], member: Principal) -> None:
        self.services = services
        self.a, self.b = teams
        self.member = member

    async def ask(self, team: str, question: str, **request: Any) -> tuple[str, list[Any], Any]:
        """One chat turn: (answer, sources, the turn)."""
        request.setdefault("temperature", 0.0)
        turn = await start_chat_turn(
            self.services,
            self.member,
            ChatRequest(tenant_id=team, question=question, max_tokens=200, **request),
        )
        text = ""
        async for chunk in turn.stream():
            text = chunk.text
        return text, turn.sources, turn


async def _run(tmp_path: Path, engine: Any = None) -> AsyncIterator[Run]:
    tag = uuid.uuid4().hex[:10]
    teams = (f"rc{tag}a", f"rc{tag}b")
    tenants = TenantRegistry(
        [
            Tenant(
                id=team,
                display_name=name,
                description="",
                prompt=TEMPLATE,
                response_cache_seconds=300,
            )
            for team, name in zip(teams, ("Alpha", "Beta"), strict=True)
        ]
    )
    settings = Settings(
        data_dir=tmp_path,
        model=str(BUNDLED_MODEL_DIR),
        redis_url=REDIS_URL,
        rate_limit_user="1000/minute",
        rate_limit_tenant="1000/minute",
    )
    services = build_services(settings, tenants=tenants)
    fake = None
    if engine is None:
        engine = fake = FakeEngine(settings)
        await fake.start()
    services.engine = engine
    await services.auditor.start()
    member = Principal(
        subject=f"ann-{tag}",
        email=None,
        kind="user",
        tenant_roles={team: "editor" for team in teams},
    )
    try:
        yield Run(services, teams, member)
    finally:
        await services.auditor.stop()
        if fake is not None:
            await fake.stop()
        cleaner = aioredis.Redis.from_url(REDIS_URL)
        for team in teams:
            keys = [k async for k in cleaner.scan_iter(match=f"{KEY_PREFIX}:{team}:*")]
            if keys:
                await cleaner.delete(*keys)
        await cleaner.aclose()
        assert services.redis is not None
        await services.redis.aclose()


@pytest.fixture(scope="module")
async def run(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Run]:
    """Two caching teams with the fake engine, shared by this module's tests (each asks its
    own questions and counts the engine's requests from where it started; the first one
    needs both teams without documents)."""
    async for value in _run(tmp_path_factory.mktemp("response-cache")):
        yield value


def ingest(run: Run, team: str, tmp_path: Path, name: str, text: str) -> str:
    """Upload `text` as `name` to `team`; its document id."""
    path = tmp_path / name
    path.write_text(text)
    services = run.services
    [outcome] = services.knowledge.ingest(services.tenants.get(team), [path], "tester")
    assert outcome.status == "indexed", outcome
    assert outcome.document_id is not None
    return outcome.document_id


def engine_calls(run: Run) -> int:
    """Requests the fake engine accepted so far."""
    engine = run.services.engine
    assert isinstance(engine, FakeEngine)
    return len(engine.calls)


async def test_another_team_with_the_very_same_prompt_never_gets_the_answer(
    run: Run, tmp_path: Path
) -> None:
    engine = run.services.engine
    assert isinstance(engine, FakeEngine)
    engine.enqueue("Alpha's own answer.", "Beta's own answer.")
    start = engine_calls(run)
    a_text, a_sources, a_turn = await run.ask(run.a, "What is the dress code?")
    b_text, b_sources, b_turn = await run.ask(run.b, "What is the dress code?")
    assert engine_calls(run) == start + 2
    assert engine.calls[-2].messages == engine.calls[-1].messages  # identical prompts
    assert (a_text, b_text) == ("Alpha's own answer.", "Beta's own answer.")
    assert b_turn.cache.key != a_turn.cache.key and run.b in b_turn.cache.key
    assert CACHE_HIT_FLAG not in audit_events(run.services, b_turn.request_id)[0].flags
    # With documents: each team is answered with its own sources, never the other's.
    a_doc = ingest(run, run.a, tmp_path, "a.txt", "The travel budget is 900 euros a year.")
    b_doc = ingest(run, run.b, tmp_path, "b.txt", "The travel budget is 900 euros a year.")
    _, a_sources, _ = await run.ask(run.a, "What is the travel budget?")
    assert a_doc in [s.document_id for s in a_sources]
    b_text, b_sources, _ = await run.ask(run.b, "What is the travel budget?")
    assert engine_calls(run) == start + 4  # Beta's question went to the engine
    assert [s.document_id for s in b_sources] == [b_doc] and a_doc != b_doc
    _, b_sources_hit, b_hit = await run.ask(run.b, "What is the travel budget?")
    assert engine_calls(run) == start + 4 and [s.document_id for s in b_sources_hit] == [b_doc]
    assert b_text and CACHE_HIT_FLAG in audit_events(run.services, b_hit.request_id)[0].flags


async def test_an_identical_greedy_request_is_answered_from_the_cache_and_audited(
    run: Run, tmp_path: Path
) -> None:
    doc = ingest(run, run.a, tmp_path, "leave.txt", "Parental leave is sixteen weeks, fully paid.")
    first, first_sources, miss = await run.ask(run.a, "How long is parental leave?")
    before = engine_calls(run)
    again, again_sources, hit = await run.ask(run.a, "How long is parental leave?")
    assert engine_calls(run) == before  # the engine was not asked again
    assert again == first and "sixteen weeks" in again
    assert [s.document_id for s in again_sources] == [s.document_id for s in first_sources]
    assert doc in [s.document_id for s in again_sources]
    rows = {row.request_id: row for row in audit_events(run.services)}
    assert CACHE_HIT_FLAG not in rows[miss.request_id].flags
    assert rows[miss.request_id].tokens_out > 0
    hit_row = rows[hit.request_id]
    assert hit_row.outcome == "ok" and CACHE_HIT_FLAG in hit_row.flags
    assert (hit_row.tokens_in, hit_row.tokens_out) == (0, 0)  # the engine did nothing
    assert doc in hit_row.document_ids


async def test_an_upload_or_a_delete_makes_the_next_answer_fresh(run: Run, tmp_path: Path) -> None:
    pay = ingest(run, run.a, tmp_path, "pay.txt", "Salaries are paid on the 25th of each month.")
    question = "When are salaries paid?"
    start = engine_calls(run)
    before, _, _ = await run.ask(run.a, question)
    await run.ask(run.a, question)
    assert engine_calls(run) == start + 1 and "25th" in before
    # An unrelated upload: retrieval (so the prompt) may not change, the version does.
    other = ingest(run, run.a, tmp_path, "menu.txt", "The canteen serves soup on Fridays.")
    _, _, after_upload = await run.ask(run.a, question)
    assert engine_calls(run) == start + 2
    assert CACHE_HIT_FLAG not in audit_events(run.services, after_upload.request_id)[0].flags
    await run.ask(run.a, question)
    assert engine_calls(run) == start + 2  # cached under the new version
    # Delete the document the cached answers quoted: the next answer cannot be one of them.
    run.services.knowledge.delete_document(run.services.tenants.get(run.a), pay)
    fresh, sources, after_delete = await run.ask(run.a, question)
    assert engine_calls(run) == start + 3
    assert "25th" not in fresh and pay not in [s.document_id for s in sources]
    assert CACHE_HIT_FLAG not in audit_events(run.services, after_delete.request_id)[0].flags
    await run.ask(run.a, question)  # and the fresh answer is cached in its turn
    assert engine_calls(run) == start + 3
    run.services.knowledge.delete_document(run.services.tenants.get(run.a), other)


async def test_sampled_requests_are_never_cached(run: Run) -> None:
    assert run.services.redis is not None
    stored = [k async for k in run.services.redis.scan_iter(match=f"{KEY_PREFIX}:{run.a}:*")]
    start = engine_calls(run)
    for _ in range(2):
        await run.ask(run.a, "Tell me about the office.", temperature=0.7)
    assert engine_calls(run) == start + 2
    for _ in range(2):  # greedy but two answers: the cache cannot give two back
        await run.ask(run.a, "Tell me about the office.", sampling=SamplingOptions(n=2))
    assert engine_calls(run) == start + 4
    keys = [k async for k in run.services.redis.scan_iter(match=f"{KEY_PREFIX}:{run.a}:*")]
    assert sorted(keys) == sorted(stored)  # nothing was kept
    assert cacheable(GenerationParams(max_tokens=8, temperature=0.0))
    assert not cacheable(GenerationParams(max_tokens=8, temperature=0.2))
    logprobs = SamplingOptions(logprobs=True, top_logprobs=2)
    assert not cacheable(GenerationParams(max_tokens=8, temperature=0.0, sampling=logprobs))


async def test_redis_down_is_a_miss_and_the_turn_still_answers(
    run: Run, caplog: pytest.LogCaptureFixture
) -> None:
    working = run.services.redis
    run.services.redis = aioredis.Redis.from_url("redis://127.0.0.1:1/0")
    start = engine_calls(run)
    try:
        text, _, turn = await run.ask(run.a, "Is anyone there?")
        text_again, _, _ = await run.ask(run.a, "Is anyone there?")
    finally:
        await run.services.redis.aclose()
        run.services.redis = working
    assert text and text_again == text and engine_calls(run) == start + 2
    assert any("response cache unavailable" in r.getMessage() for r in caplog.records)
    assert audit_events(run.services, turn.request_id)[0].outcome == "ok"


@pytest.mark.engine
async def test_a_hit_on_the_real_engine_gives_the_engines_answer_back(
    tmp_path: Path, engine: Any
) -> None:
    async for real in _run(tmp_path, engine):
        first, _, miss = await real.ask(real.a, "What is the capital of France?")
        again, _, hit = await real.ask(real.a, "What is the capital of France?")
        assert first and again == first  # the engine's own greedy answer, given back
        rows = {row.request_id: row for row in audit_events(real.services)}
        assert rows[miss.request_id].tokens_out > 0
        assert CACHE_HIT_FLAG in rows[hit.request_id].flags
