"""One chat turn for one tenant: the single request path shared by the UI, the API and the CLI.

`start_chat_turn` does everything that can refuse a request before a token is generated
(identity is given, then: tenant lookup, authorize, rate limit, retrieval, prompt rendering and
fitting, prompt hooks and the injection check), so callers can answer with a proper error
status before they start streaming. `ChatTurn.stream()` then waits for the team's place in
the shared engine (core/scheduling: token-fair across teams) and streams from it. Exactly one
audit event is written per turn: by `start_chat_turn` when it refuses, otherwise by `stream()`
when it ends (ok, error or cancelled).

Token budgets (core/budgets): the last check before a turn is accepted reserves the most it can
use (prompt + max_tokens) on the team's and the member's budgets, or refuses it with
`BudgetExceeded` (audited `rate_limited`, flag `budget_exceeded`). When the stream ends, the
reservation is replaced by what the engine counted (prompt + completion tokens; nothing if no
token came back); a turn never streamed gives it back.

Response cache (core/chat/response_cache.py): for a team that keeps answers, a deterministic
turn's entry is read before it waits for the engine; a hit is streamed as one chunk, without
the scheduler or the engine, and audited `ok` with the flag `cache_hit` and no tokens.

The tenant always comes from the server-side registry; client-supplied history is untrusted
text: only user/assistant turns survive, length-capped, and it never reaches retrieval.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
import uuid
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal, cast

from core.adapters.registry import active_adapter_path
from core.audit.auditor import AuditEvent
from core.budgets.allowance import Allowance
from core.budgets.store import Reservation
from core.chat.injection import check_prompt, detect_injection
from core.chat.prompt import clean_question, fit_prompt, generation_params, sanitize_history
from core.chat.request import ChatRequest
from core.chat.response_cache import CACHE_HIT_FLAG, ResponseCache
from core.engine.base import (
    EngineOptions,
    GenerationChunk,
    GenerationParams,
    PreparedPrompt,
    check_sampling,
)
from core.errors import (
    BudgetExceeded,
    EngineUnavailable,
    InvalidRequest,
    PermissionDenied,
    RateLimited,
    TenantLLMError,
)
from core.plugins import process_prompt
from core.rbac import authorize
from core.redaction import redact_secrets

if TYPE_CHECKING:
    from core.engine import Engine
    from core.identity import Principal
    from core.metrics import Metrics
    from core.services import Services
    from core.tenancy import Source, Tenant

_PromptKey = tuple[tuple[str, str], ...]

__all__ = ["ChatTurn", "start_chat_turn"]

Outcome = Literal["ok", "denied", "error", "rate_limited", "cancelled"]


@dataclass
class _AuditContext:
    """What the one audit event of a turn says, filled in as the turn goes."""

    action: str
    principal: Principal
    request: ChatRequest
    request_id: str
    started: float
    tenant_id: str | None = None
    document_ids: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    tokens_in: int = 0
    tokens_out: int = 0
    prompt_text: str | None = None  # redacted; stored only if audit_prompt_text is on
    metrics: Metrics | None = None

    def finish(self, outcome: Outcome, status: int, error: Exception | None) -> AuditEvent:
        """The turn ends now: count it in the metrics and return its one audit event."""
        if self.metrics is not None:
            tokens = (self.tokens_in, self.tokens_out) if self.tokens_out else (0, 0)
            self.metrics.observe_turn(self.tenant_id, self.request.channel, outcome, error, tokens)
        return self.event(outcome, status, error)

    def event(self, outcome: Outcome, status: int, error: Exception | None) -> AuditEvent:
        """The audit event for this turn, ending now."""
        question = self.request.question
        return AuditEvent(
            action=self.action,
            outcome=outcome,
            user_sub=self.principal.subject,
            user_email=self.principal.email,
            tenant_id=self.tenant_id,
            request_id=self.request_id,
            status=status,
            latency_ms=(time.monotonic() - self.started) * 1000.0,
            tokens_in=self.tokens_in,
            tokens_out=self.tokens_out,
            document_ids=list(dict.fromkeys(self.document_ids)),
            client_ip=self.request.client_ip,
            user_agent=self.request.user_agent,
            prompt_digest=hashlib.sha256(question.encode("utf-8", "replace")).hexdigest(),
            prompt_text=self.prompt_text,
            error_class=type(error).__name__ if error is not None else None,
            flags=list(self.flags),
            detail=_error_detail(error),
        )


def _error_detail(error: Exception | None) -> str | None:
    if error is None:
        return None
    if isinstance(error, TenantLLMError):
        return error.message[:500]
    return "internal error"  # never leak an unexpected exception's text into the log viewer


def _outcome_for(error: TenantLLMError) -> tuple[Outcome, int]:
    if isinstance(error, PermissionDenied):
        return "denied", error.status
    if isinstance(error, RateLimited | BudgetExceeded):
        return "rate_limited", error.status
    return "error", error.status


class ChatTurn:
    """An accepted chat turn: its sources are known, its answer is streamed by `stream()`."""

    def __init__(
        self,
        services: Services,
        tenant: Tenant,
        sources: list[Source],
        messages: list[dict[str, str]],
        params: GenerationParams,
        options: EngineOptions,
        audit: _AuditContext,
        reservation: Reservation | None = None,
        cache: ResponseCache | None = None,
    ) -> None:
        self.services = services
        self.tenant = tenant
        self.sources = sources
        self.messages = messages  # the rendered prompt, exactly what the engine is given
        self.params = params
        self.options = options
        self.request_id = audit.request_id
        self.prompt_tokens = audit.tokens_in
        self._audit = audit
        self._streamed = False
        self._generated = False  # a token came back from the engine
        self._reservation = reservation
        self.cache = cache  # the turn's response-cache entry (None: not cached)
        # What is left of the budgets that apply (None: none does): after reserving this
        # turn's most, then, once the stream ended, after settling what it used.
        self.allowance: Allowance | None = reservation.allowance if reservation else None

    def abandon(self) -> None:
        """Audit the turn as cancelled if it was never streamed (its caller gave up first).

        A no-op once `stream()` has started: that path writes the event itself.
        """
        if not self._streamed:
            self._streamed = True
            self.services.auditor.record(self._audit.finish("cancelled", 499, None))
            self._settle(0)  # rare, one short write: not worth a thread here

    async def stream(self) -> AsyncGenerator[GenerationChunk, None]:
        """Stream the answer; write the turn's audit event when the stream ends in any way.

        Closing the iterator early (client gone, Stop button) aborts the engine request and
        records `cancelled`. A turn can be streamed once.
        """
        if self._streamed:
            raise InvalidRequest("This chat turn has already been streamed.")
        self._streamed = True
        engine = self.services.engine
        if engine is None:
            raise EngineUnavailable("The model is not available in this process.")
        outcome: Outcome = "error"
        status = 500
        error: Exception | None = None
        try:
            # Closed with the stream: leaving early releases the place and the engine now.
            async with aclosing(self._generate(engine)) as chunks:
                async for chunk in chunks:
                    yield chunk
            outcome, status = "ok", 200
        except (GeneratorExit, asyncio.CancelledError) as exc:
            outcome, status, error = "cancelled", 499, None
            raise exc
        except TenantLLMError as exc:  # e.g. no place in the engine in time: rate_limited
            (outcome, status), error = _outcome_for(exc), exc
            raise
        except Exception as exc:
            error = exc
            raise
        finally:
            self.services.auditor.record(self._audit.finish(outcome, status, error))
            used = self._audit.tokens_in + self._audit.tokens_out if self._generated else 0
            # Shielded: a second cancellation must not lose what the turn used (the write
            # runs to its end in its thread either way).
            await asyncio.shield(asyncio.to_thread(self._settle, used))

    async def _generate(self, engine: Engine) -> AsyncGenerator[GenerationChunk, None]:
        """Wait for the team's place in the engine (fair share), then stream from it."""
        metrics = self.services.metrics
        if self.cache is not None and (hit := await self.cache.get()) is not None:
            # The engine does nothing for a hit: audited as such, no tokens for usage or budgets.
            self._audit.flags.append(CACHE_HIT_FLAG)
            self._audit.tokens_in = 0
            yield hit.chunk()
            return
        async with self.services.scheduler.place(self.tenant.id, self.prompt_tokens) as place:
            metrics.observe_queue_wait(self.tenant.id, place.waited)
            generating = time.monotonic()
            options = replace(self.options, priority=self.options.priority + place.rank)
            chunks = engine.stream_chat(self.messages, self.params, options)
            # Leaving early must close the engine's generator now (that aborts the request
            # in the engine), not whenever the garbage collector gets to it.
            async with aclosing(cast(AsyncGenerator[GenerationChunk, None], chunks)) as stream:
                async for chunk in stream:
                    if not self._generated:  # time to first token, from the turn's start
                        metrics.observe_ttft(self.tenant.id, time.monotonic() - self._audit.started)
                    self._generated = True
                    self._audit.tokens_in = chunk.prompt_tokens or self._audit.tokens_in
                    self._audit.tokens_out = chunk.completion_tokens
                    place.generated(chunk.completion_tokens)
                    if chunk.finished and self.cache is not None:
                        await self.cache.put(chunk)  # before the caller may close the stream
                    yield chunk
            metrics.observe_generation(self.tenant.id, time.monotonic() - generating)

    def _settle(self, used: int) -> None:
        """Replace this turn's reservation by `used` tokens (once; no-op without budgets)."""
        reservation, self._reservation = self._reservation, None
        if reservation is not None:
            self.allowance = self.services.budgets.settle(reservation, used)


async def start_chat_turn(
    services: Services, principal: Principal, request: ChatRequest
) -> ChatTurn:
    """Check, retrieve and prepare one chat turn for `principal`; refusals are audited.

    Raises TenantNotFound, PermissionDenied, RateLimited, InvalidRequest, PromptTooLong,
    PromptRejected, EngineUnavailable, BudgetExceeded or BudgetUnavailable, each after writing
    one audit event. Cancelled while preparing (the Stop button before the first token, a
    client gone), it records `cancelled`.
    """
    audit = _AuditContext(
        action="api_chat" if request.channel == "api" else "chat",
        principal=principal,
        request=request,
        request_id=uuid.uuid4().hex,
        started=time.monotonic(),
        metrics=services.metrics,
    )
    if isinstance(request.question, str):  # the auditor keeps it only if the setting says so
        audit.prompt_text = redact_secrets(request.question)[0]
    try:
        return await _prepare_turn(services, principal, request, audit)
    except TenantLLMError as exc:
        outcome, status = _outcome_for(exc)
        services.auditor.record(audit.finish(outcome, status, exc))
        raise
    except asyncio.CancelledError:
        # Not an Exception: without this a turn stopped during retrieval left no audit row.
        services.auditor.record(audit.finish("cancelled", 499, None))
        raise
    except Exception as exc:  # a bug or a broken store: still one audit event, then re-raise
        services.auditor.record(audit.finish("error", 500, exc))
        raise


async def _prepare_turn(
    services: Services, principal: Principal, request: ChatRequest, audit: _AuditContext
) -> ChatTurn:
    # An unknown id is a 404 for everyone: tenant ids are configuration, not secrets.
    tenant = services.tenants.get(request.tenant_id)
    audit.tenant_id = tenant.id
    authorize(principal, tenant.id, "chat")
    await asyncio.to_thread(services.limits.check, principal, tenant.id)
    engine = services.engine
    if engine is None or not engine.ready:
        raise EngineUnavailable("The model is starting; try again in a moment.")
    question = clean_question(request.question)
    history = sanitize_history(request.history)
    # The tenant's caps, resolved once: the same numbers for the checks, the fit and the engine.
    options = EngineOptions.for_tenant(
        services.settings, tenant, user_id=principal.subject, request_id=audit.request_id
    )
    options = await _with_team_adapter(services, tenant.id, options)
    params = generation_params(
        request,
        default_max_tokens=services.settings.default_max_tokens,
        output_cap=options.max_output_tokens,
        team_temperature=tenant.temperature,
    )
    check_sampling(params.sampling, options.bounds)  # the tenant's n, logprobs, ... bounds
    # Retrieval sees only the question and the registry's tenant: never history or client ids.
    sources = await asyncio.to_thread(services.knowledge.retrieve, tenant, question)
    fitted, sources, prompt = await _fit_prompt(
        engine, tenant, question, sources, history, options.max_prompt_tokens
    )
    tokens = prompt.tokens
    audit.document_ids = [s.document_id for s in sources]
    audit.tokens_in = tokens
    messages = _apply_prompt_checks(services, principal, tenant, question, history, fitted, audit)
    if messages != fitted:  # a prompt hook rewrote it: count what the engine will be given
        prompt = await engine.prepare_prompt(messages)
    options = replace(options, prompt=prompt)  # the engine does not tokenize it again
    # Every one of the n answers may use max_tokens: the most the turn can use is all of them.
    most = tokens + params.sampling.n * params.max_tokens
    cache = await ResponseCache.for_turn(
        services.redis,
        tenant,
        messages,
        params,
        options,
        model=f"{engine.backend}:{services.settings.model}",
        database_url=services.settings.resolved_database_url,
    )
    held = await _reserve_budget(services, principal, tenant, most, audit)
    return ChatTurn(services, tenant, list(sources), messages, params, options, audit, held, cache)


class _Uncounted(Exception):
    """`fit_prompt` asked for the size of a rendering not counted yet."""

    def __init__(self, messages: list[dict[str, str]]) -> None:
        super().__init__("uncounted prompt")
        self.messages = messages


def _prompt_key(messages: list[dict[str, str]]) -> _PromptKey:
    return tuple((m["role"], m["content"]) for m in messages)


async def _fit_prompt(
    engine: Engine,
    tenant: Tenant,
    question: str,
    sources: list[Source],
    history: list[dict[str, str]],
    prompt_cap: int,
) -> tuple[list[dict[str, str]], list[Source], PreparedPrompt]:
    """`fit_prompt` counting with the engine's `prepare_prompt`, which may be a round trip to
    a remote server and so must be awaited, never run on the event loop.

    `fit_prompt` is pure and synchronous: a rendering it has not seen counted stops it, is
    tokenized (awaited) and the fit starts again. Each rendering is tokenized once, so a turn
    whose prompt fits at once (nearly all) is tokenized exactly once.
    """
    counted: dict[_PromptKey, PreparedPrompt] = {}

    def count(messages: list[dict[str, str]]) -> int:
        prepared = counted.get(_prompt_key(messages))
        if prepared is None:
            raise _Uncounted(messages)
        return prepared.tokens

    while True:
        try:
            messages, kept, _ = fit_prompt(
                tenant.prompt,
                question,
                sources,
                history,
                count_tokens=count,
                prompt_cap=prompt_cap,
            )
        except _Uncounted as missing:
            counted[_prompt_key(missing.messages)] = await engine.prepare_prompt(missing.messages)
            continue
        return messages, kept, counted[_prompt_key(messages)]


async def _reserve_budget(
    services: Services, principal: Principal, tenant: Tenant, amount: int, audit: _AuditContext
) -> Reservation | None:
    """Hold the most this turn can use on its budgets, or raise BudgetExceeded (flagged)."""
    if services.budgets.known_without_budgets(tenant.id):
        return None  # cached: no database, no thread for a team without budgets
    reserve = functools.partial(
        services.budgets.reserve,
        tenant.id,
        principal.subject,
        amount,
        team_name=tenant.display_name,
    )
    pending = asyncio.ensure_future(asyncio.to_thread(reserve))
    try:
        return await asyncio.shield(pending)
    except BudgetExceeded:
        audit.flags.append("budget_exceeded")
        raise
    except asyncio.CancelledError:
        # The caller gave up while the database reserved: give back what lands after that.
        pending.add_done_callback(functools.partial(_release_orphan, services))
        raise


def _release_orphan(services: Services, done: asyncio.Future[Reservation | None]) -> None:
    if done.cancelled() or done.exception() is not None:
        return
    reservation = done.result()
    if reservation is not None:
        services.budgets.settle(reservation, 0)


def _apply_prompt_checks(
    services: Services,
    principal: Principal,
    tenant: Tenant,
    question: str,
    history: Sequence[dict[str, str]],
    messages: list[dict[str, str]],
    audit: _AuditContext,
) -> list[dict[str, str]]:
    """Prompt hooks (may rewrite or refuse) then the injection detector (flags or refuses)."""
    draft = process_prompt(tenant, principal.subject, question, messages)
    audit.flags.extend(draft.flags)
    user_text = "\n".join([*(m["content"] for m in history if m["role"] == "user"), question])
    others = [
        n for t in services.tenants.all() if t.id != tenant.id for n in (t.id, t.display_name)
    ]
    block = services.settings.injection_block
    # Flags are recorded before a refusal is raised, so a blocked prompt is audited with them.
    flags = detect_injection(user_text, tenant.id, others)
    audit.flags.extend(flags)
    check_prompt(user_text, tenant.id, others, block=block)
    return draft.messages


async def _with_team_adapter(
    services: Services, tenant_id: str, options: EngineOptions
) -> EngineOptions:
    """The options with the team's active adapter (`tenantllm adapters activate`), which
    takes the place of a plugin's static `lora_path`; unchanged while LoRA is off (the engine
    would ignore an adapter, so the database is not asked)."""
    if not services.settings.enable_lora:
        return options
    url = services.settings.resolved_database_url
    path = await asyncio.to_thread(active_adapter_path, url, tenant_id)
    return options if path is None else replace(options, lora_path=path)
