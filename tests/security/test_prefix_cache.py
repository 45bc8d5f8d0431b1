"""Prefix-cache isolation (CVE-2025-46570): who may hit whose cached prompt prefix.

A prefix-cache hit is measurably faster, so whoever shares a cache can time whether a prompt
was sent before. Proven on the real engine through vLLM's own count of prompt tokens served
from the cache (`num_cached_tokens`, our `GenerationChunk.cached_tokens`), not only by
comparing salt strings: with `TENANTLLM_PREFIX_CACHE_SCOPE=user` (the default) a teammate's
identical prompt is computed afresh; with `tenant` teammates share; across tenants never.

Each test uses a prompt no other test sends (a fresh tag up front), so nothing was cached
before it; and each checks that the SAME caller does hit, so a "no hit" cannot come from a
prompt too short to fill a cache block.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from core.chat.request import ChatRequest
from core.chat.turn import start_chat_turn
from core.config import Settings
from core.engine.base import (
    Engine,
    GenerationChunk,
    GenerationParams,
    cache_salt,
    request_cache_salt,
)
from tests.test_chat import principal

pytestmark = pytest.mark.engine

ONE_TOKEN = GenerationParams(max_tokens=1, temperature=0.0)
# vLLM caches whole blocks (128 tokens on the CPU): this prefix fills several.
RULES = " ".join(f"Rule {i}: answer politely, cite section {i} of the handbook." for i in range(40))


def _messages(tag: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": f"[{tag}] You are the team's assistant. {RULES}"},
        {"role": "user", "content": "What is the standard discount?"},
    ]


async def _cached(engine: Engine, messages: list[dict[str, str]], tenant: str, user: str) -> int:
    """Prompt tokens of one request that vLLM served from its prefix cache."""
    last: GenerationChunk | None = None
    options = engine.default_options(tenant, user_id=user)
    async for chunk in engine.stream_chat(messages, ONE_TOKEN, options):
        last = chunk
    assert last is not None and last.finished
    return last.cached_tokens


@pytest.fixture(params=["user", "tenant"])
def scoped(request: Any, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """The shared engine with `prefix_cache_scope` set to the parameter."""
    settings = engine.settings.model_copy(update={"prefix_cache_scope": request.param})
    monkeypatch.setattr(engine, "settings", settings)
    return engine


def test_salts_follow_the_scope_and_never_cross_tenants(engine_settings: Settings) -> None:
    user = engine_settings.model_copy(update={"prefix_cache_scope": "user"})
    team = engine_settings.model_copy(update={"prefix_cache_scope": "tenant"})
    assert request_cache_salt(user, "sales", "alice") == request_cache_salt(user, "sales", "alice")
    assert request_cache_salt(user, "sales", "alice") != request_cache_salt(user, "sales", "bob")
    assert request_cache_salt(team, "sales", "alice") == request_cache_salt(team, "sales", "bob")

    def salts(tenant: str) -> set[str]:
        return {request_cache_salt(s, tenant, w) for s in (user, team) for w in ("alice", None)}

    # sales and finance never meet, in any scope, for any user.
    assert not salts("sales") & salts("finance")
    # A user's salt is never the team's salt.
    assert request_cache_salt(user, "sales", "alice") != cache_salt(user.secret_key, "sales")
    # Ids cannot be shaped to collide: the pair is encoded, not concatenated.
    key = engine_settings.secret_key
    assert cache_salt(key, "a:b", "c") != cache_salt(key, "a", "b:c")
    assert cache_salt(key, "a", "b") != cache_salt(key, 'a", "b')


def test_default_scope_is_user() -> None:
    assert Settings.model_fields["prefix_cache_scope"].default == "user"


async def test_teammates_share_the_cache_only_in_tenant_scope(scoped: Engine) -> None:
    messages = _messages(uuid.uuid4().hex)
    await _cached(scoped, messages, "sales", "alice")  # warms alice's (or the team's) cache
    assert await _cached(scoped, messages, "sales", "alice") > 0  # the prompt is cacheable
    bob = await _cached(scoped, messages, "sales", "bob")
    if scoped.settings.prefix_cache_scope == "user":
        assert bob == 0, "a teammate hit another user's prefix cache"
    else:
        assert bob > 0, "teammates should share cached prefixes in tenant scope"


async def test_other_tenants_never_hit_the_cache(scoped: Engine) -> None:
    messages = _messages(uuid.uuid4().hex)
    await _cached(scoped, messages, "sales", "alice")
    assert await _cached(scoped, messages, "sales", "alice") > 0
    # Same prompt, same user id, another tenant: a fresh computation in either scope.
    assert await _cached(scoped, messages, "finance", "alice") == 0


async def test_chat_turns_of_teammates_do_not_share_the_cache(
    services: Any, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The product's path (start_chat_turn -> ChatTurn.stream) passes the user to the engine."""
    monkeypatch.setattr(
        engine, "settings", engine.settings.model_copy(update={"prefix_cache_scope": "user"})
    )
    question = f"[{uuid.uuid4().hex}] Please answer by the handbook. {RULES}"
    alice = principal("alice", {"sales": "member"})
    bob = principal("bob", {"sales": "member"})
    cached = [await _turn_cached(services, who, question) for who in (alice, alice, bob)]
    assert cached[1] > 0, cached  # the same user does hit: the prompt is long enough
    assert cached[2] == 0, f"bob hit alice's prefix cache: {cached}"


async def _turn_cached(services: Any, who: Any, question: str) -> int:
    request = ChatRequest(tenant_id="sales", question=question, max_tokens=1, temperature=0.0)
    turn = await start_chat_turn(services, who, request)
    chunks = [chunk async for chunk in turn.stream()]
    return chunks[-1].cached_tokens
