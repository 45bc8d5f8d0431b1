"""One chat turn for one tenant: the single request path shared by the UI, the API and the CLI.

`start_chat_turn` does everything that can refuse a request before a token is generated
(identity is given, then: tenant lookup, authorize, rate limit, retrieval, prompt rendering and
fitting, prompt hooks and the injection check), so callers can answer with a proper error
status before they start streaming. `ChatTurn.stream()` then takes a per-tenant generation slot
and streams from the shared engine. Exactly one audit event is written per turn: by
`start_chat_turn` when it refuses, otherwise by `stream()` when it ends (ok, error or cancelled).

The tenant always comes from the server-side registry; client-supplied history is untrusted
text: only user/assistant turns survive, length-capped, and it never reaches retrieval.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from core.audit import AuditEvent
from core.engine import GenerationChunk, GenerationParams
from core.errors import (
    EngineUnavailable,
    InvalidRequest,
    PermissionDenied,
    PromptTooLong,
    RateLimited,
    TenantLLMError,
)
from core.injection import check_prompt
from core.plugins import process_prompt
from core.rbac import authorize
from core.redaction import redact_secrets

if TYPE_CHECKING:
    from core.identity import Principal
    from core.services import Services
    from core.tenancy import Source, Tenant

Channel = Literal["ui", "api", "cli"]
Outcome = Literal["ok", "denied", "error", "rate_limited", "cancelled"]

# Client history is untrusted and only context: keep the recent part, and bound each turn.
MAX_HISTORY_MESSAGES = 20
MAX_HISTORY_CHARS = 4000
MAX_QUESTION_CHARS = 16000
HISTORY_ROLES = ("user", "assistant")


@dataclass(frozen=True)
class ChatRequest:
    """What a caller asks for. Nothing in here decides which data is read except `tenant_id`,
    which is looked up in the server's registry and authorized for the principal."""

    tenant_id: str
    question: str
    history: Sequence[dict[str, str]] = ()
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    channel: Channel = "ui"
    client_ip: str | None = None
    user_agent: str | None = None


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
    prompt_text: str | None = None  # only when the audit_prompt_text setting is on

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
    if isinstance(error, RateLimited):
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
        audit: _AuditContext,
    ) -> None:
        self.services = services
        self.tenant = tenant
        self.sources = sources
        self.messages = messages  # the rendered prompt, exactly what the engine is given
        self.params = params
        self.request_id = audit.request_id
        self.prompt_tokens = audit.tokens_in
        self._audit = audit
        self._streamed = False

    async def stream(self) -> AsyncIterator[GenerationChunk]:
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
            async with self.services.limits.generation_slot(self.tenant.id):
                chunks = engine.stream_chat(
                    self.messages,
                    self.params,
                    tenant_id=self.tenant.id,
                    request_id=self.request_id,
                    priority=self.tenant.priority,
                    lora_path=self.tenant.lora_path,
                )
                # aclosing: leaving early must close the engine's generator now (it aborts the
                # request there), not whenever the garbage collector gets to it.
                async with aclosing(chunks) as stream:
                    async for chunk in stream:
                        self._audit.tokens_in = chunk.prompt_tokens or self._audit.tokens_in
                        self._audit.tokens_out = chunk.completion_tokens
                        yield chunk
            outcome, status = "ok", 200
        except (GeneratorExit, asyncio.CancelledError) as exc:
            outcome, status, error = "cancelled", 499, None
            raise exc
        except TenantLLMError as exc:
            outcome, status, error = "error", exc.status, exc
            raise
        except Exception as exc:
            error = exc
            raise
        finally:
            self.services.auditor.record(self._audit.event(outcome, status, error))


async def start_chat_turn(
    services: Services, principal: Principal, request: ChatRequest
) -> ChatTurn:
    """Check, retrieve and prepare one chat turn for `principal`; refusals are audited.

    Raises TenantNotFound, PermissionDenied, RateLimited, InvalidRequest, PromptTooLong,
    PromptRejected or EngineUnavailable, each after writing one audit event.
    """
    audit = _AuditContext(
        action="api_chat" if request.channel == "api" else "chat",
        principal=principal,
        request=request,
        request_id=uuid.uuid4().hex,
        started=time.monotonic(),
    )
    if services.settings.audit_prompt_text and isinstance(request.question, str):
        audit.prompt_text = redact_secrets(request.question)[0]
    try:
        return await _prepare_turn(services, principal, request, audit)
    except TenantLLMError as exc:
        outcome, status = _outcome_for(exc)
        services.auditor.record(audit.event(outcome, status, exc))
        raise
    except Exception as exc:  # a bug or a broken store: still one audit event, then re-raise
        services.auditor.record(audit.event("error", 500, exc))
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
    question = _clean_question(request.question)
    history = sanitize_history(request.history)
    params = _generation_params(services, tenant, request)
    # Retrieval sees only the question and the registry's tenant: never history or client ids.
    sources = await asyncio.to_thread(services.knowledge.retrieve, tenant, question)
    messages, sources, tokens = _fit_prompt(services, tenant, question, sources, history)
    audit.document_ids = [s.document_id for s in sources]
    audit.tokens_in = tokens
    messages = _apply_prompt_checks(services, principal, tenant, question, history, messages, audit)
    return ChatTurn(services, tenant, list(sources), messages, params, audit)


def sanitize_history(history: Sequence[object]) -> list[dict[str, str]]:
    """Keep only recent user/assistant text turns, each capped: history is client data.

    System messages, tool turns, unknown roles, non-text content and extra keys are dropped,
    so a client cannot smuggle instructions or another tenant's context in as "history".
    """
    kept: list[dict[str, str]] = []
    for item in history:
        if not isinstance(item, dict):
            continue
        role, content = item.get("role"), item.get("content")
        if role not in HISTORY_ROLES or not isinstance(content, str) or not content.strip():
            continue
        kept.append({"role": role, "content": content[:MAX_HISTORY_CHARS]})
    return kept[-MAX_HISTORY_MESSAGES:]


def _clean_question(question: str) -> str:
    question = question.strip() if isinstance(question, str) else ""
    if not question:
        raise InvalidRequest("The question is empty.")
    if len(question) > MAX_QUESTION_CHARS:
        raise PromptTooLong(f"The question is longer than {MAX_QUESTION_CHARS} characters.")
    return question


def _generation_params(
    services: Services, tenant: Tenant, request: ChatRequest
) -> GenerationParams:
    settings = services.settings
    cap = tenant.max_output_tokens or settings.max_output_tokens
    max_tokens = request.max_tokens
    if max_tokens is None:
        max_tokens = min(settings.default_max_tokens, cap)
    if not 1 <= max_tokens <= cap:
        raise InvalidRequest(f"max_tokens must be between 1 and {cap} for this tenant.")
    temperature = 0.7 if request.temperature is None else request.temperature
    if not 0.0 <= temperature <= 2.0:
        raise InvalidRequest("temperature must be between 0 and 2.")
    top_p = 1.0 if request.top_p is None else request.top_p
    if not 0.0 < top_p <= 1.0:
        raise InvalidRequest("top_p must be greater than 0 and at most 1.")
    if len(request.stop) > 4 or any(not s for s in request.stop):
        raise InvalidRequest("stop takes at most 4 non-empty strings.")
    return GenerationParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop=tuple(request.stop),
        seed=request.seed,
    )


def _fit_prompt(
    services: Services,
    tenant: Tenant,
    question: str,
    sources: Sequence[Source],
    history: Sequence[dict[str, str]],
) -> tuple[list[dict[str, str]], list[Source], int]:
    """Render the tenant's template, dropping the oldest history then the last (least
    relevant) sources until the prompt fits the tenant's cap.

    The sources returned are exactly those in the prompt, so what the user is shown as
    sources is what the model saw.
    """
    assert services.engine is not None
    cap = tenant.max_prompt_tokens or services.settings.max_prompt_tokens
    kept_sources = list(sources)
    kept_history = list(history)
    while True:
        messages = tenant.prompt.render(
            question=question, sources=kept_sources, history=kept_history
        )
        tokens = services.engine.count_prompt_tokens(messages)
        if tokens <= cap:
            return messages, kept_sources, tokens
        if kept_history:
            kept_history = kept_history[1:]
        elif kept_sources:
            kept_sources = kept_sources[:-1]
        else:
            raise PromptTooLong(
                f"The question is too long for this assistant ({tokens} tokens, at most {cap})."
            )


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
    audit.flags.extend(check_prompt(user_text, block=services.settings.injection_block))
    return draft.messages
