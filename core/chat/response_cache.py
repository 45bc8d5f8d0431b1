"""A team's answers to deterministic requests, reused from Redis: the response cache.

Opt-in per team (`Tenant.response_cache_seconds`, 0: off) and only with `TENANTLLM_REDIS_URL`.
A turn may use it only if its answer is a function of what the engine is given: temperature 0
(greedy) and one answer without log-probabilities (a cached answer has neither `n` choices nor
logprobs to give back). Everything else that shapes the answer is part of the key:

    team | model and adapter | the team's document-set version | the exact messages the engine
    would get (after retrieval, prompt hooks and history) | every generation parameter

hashed with SHA-256 under `tenantllm:answers:<team>:`. So another team never reaches an entry
(its id is in the key, and the entry's own team is checked again when it is read), an upload
or a delete changes the version (core/knowledge/documents.py `document_set_version`), and a
prompt that differs by one character is another entry. Sources are not cached: a hit is
answered with the sources of this turn's own retrieval, exactly as a miss is.

The chat turn (core/chat/turn.py) asks `ResponseCache.for_turn` when it has the prompt, reads
before it waits for the engine, and stores the answer when the engine finishes it (`stop` or
`length`; a cancelled or failed answer is never kept). A hit costs the engine nothing: the
turn is audited `ok` with the flag `cache_hit` and no tokens, and budgets are charged nothing.
Redis failing is a miss (logged), never an error of the turn.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from core.db import session_scope
from core.engine.base import EngineOptions, GenerationChunk, GenerationParams
from core.knowledge.documents import document_set_version

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from core.tenancy import Tenant

log = logging.getLogger(__name__)

CACHE_HIT_FLAG = "cache_hit"
KEY_PREFIX = "tenantllm:answers"
KEY_VERSION = 1  # bump when the key's layout changes: old entries are then never read


def cacheable(params: GenerationParams) -> bool:
    """Whether the answer to `params` is determined by the prompt: greedy, one plain answer."""
    sampling = getattr(params, "sampling", None)
    if sampling is not None and (getattr(sampling, "n", 1) != 1 or sampling.logprobs):
        return False
    return params.temperature == 0


def document_version(database_url: str, tenant_id: str) -> str:
    """The team's document-set version, read from the registry (blocking: run in a thread)."""
    with session_scope(database_url) as session:
        return document_set_version(session, tenant_id)


def cache_key(
    tenant_id: str,
    model: str,
    documents: str,
    messages: list[dict[str, str]],
    params: GenerationParams,
) -> str:
    """The entry of this exact request of this team (see the module docstring)."""
    material = json.dumps(
        {
            "v": KEY_VERSION,
            "team": tenant_id,
            "model": model,
            "documents": documents,
            "messages": messages,
            # A frozen dataclass's repr lists every field, nested ones too: a parameter added
            # later is part of the key without anyone remembering to add it here.
            "params": repr(params),
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return f"{KEY_PREFIX}:{tenant_id}:{hashlib.sha256(material.encode()).hexdigest()}"


@dataclass(frozen=True)
class CachedAnswer:
    """An answer as the engine finished it."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    def chunk(self) -> GenerationChunk:
        """The whole answer as one finished chunk (every prompt token counted as cached)."""
        return GenerationChunk(
            text=self.text,
            delta=self.text,
            finished=True,
            finish_reason=self.finish_reason,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cached_tokens=self.prompt_tokens,
        )


class ResponseCache:
    """One turn's entry in the response cache: read it, or store the finished answer."""

    def __init__(self, redis: Redis, tenant_id: str, key: str, ttl_seconds: int) -> None:
        """The entry `key` of `tenant_id`, kept `ttl_seconds` once stored."""
        self._redis = redis
        self.tenant_id = tenant_id
        self.key = key
        self.ttl_seconds = ttl_seconds

    @classmethod
    async def for_turn(
        cls,
        redis: Redis | None,
        tenant: Tenant,
        messages: list[dict[str, str]],
        params: GenerationParams,
        options: EngineOptions,
        *,
        model: str,
        database_url: str,
    ) -> ResponseCache | None:
        """The turn's entry, or None when the turn must not use the cache.

        Reads the team's document-set version (in a thread) only when it may.
        """
        ttl = tenant.response_cache_seconds
        if redis is None or ttl <= 0 or not cacheable(params):
            return None
        documents = await asyncio.to_thread(document_version, database_url, tenant.id)
        engine_model = f"{model}|{options.lora_path or ''}"
        key = cache_key(tenant.id, engine_model, documents, messages, params)
        return cls(redis, tenant.id, key, ttl)

    async def get(self) -> CachedAnswer | None:
        """The stored answer, or None (absent, unreadable, another team's, Redis down)."""
        try:
            raw = await self._redis.get(self.key)
        except (RedisError, OSError) as exc:
            log.warning("response cache unavailable (%s); answering without it", exc)
            return None
        if raw is None:
            return None
        try:
            entry: dict[str, Any] = json.loads(raw)
            if entry.get("team") != self.tenant_id:  # never another team's, whatever the key
                return None
            return CachedAnswer(
                text=str(entry["text"]),
                finish_reason=str(entry["finish_reason"]),
                prompt_tokens=int(entry["prompt_tokens"]),
                completion_tokens=int(entry["completion_tokens"]),
            )
        except (ValueError, KeyError, TypeError):
            return None

    async def put(self, chunk: GenerationChunk) -> None:
        """Keep `chunk` (the engine's finished answer) for `ttl_seconds`; failures are logged."""
        if not chunk.finished or chunk.finish_reason not in ("stop", "length"):
            return
        entry = {
            "team": self.tenant_id,
            "text": chunk.text,
            "finish_reason": chunk.finish_reason,
            "prompt_tokens": chunk.prompt_tokens,
            "completion_tokens": chunk.completion_tokens,
        }
        try:
            await self._redis.set(self.key, json.dumps(entry), ex=self.ttl_seconds)
        except (RedisError, OSError) as exc:
            log.warning("response cache unavailable (%s); the answer is not kept", exc)
