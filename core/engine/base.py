"""The one shared engine per process, behind one interface for both backends.

`vllm` (core/engine/inprocess.py) runs vLLM's `AsyncLLM` in this process; `openai`
(core/engine/remote.py) talks to a remote OpenAI-compatible vLLM server. Everything both
backends must do the same way lives here: the request's `EngineOptions` (built once per turn,
with the tenant's caps resolved once), checking parameters and caps before anything reaches
the engine, the `cache_salt`, request ids, and the in-flight bookkeeping and error mapping
around every backend's stream.

Why the salt: vLLM's prefix cache reuses the KV blocks of an identical prompt prefix, and a
hit is measurably faster, so without a salt one caller could probe which prompts another
sent (CVE-2025-46570). The salt is derived here from the deployment's secret, the tenant id
and, with `TENANTLLM_PREFIX_CACHE_SCOPE=user` (the default), the user: then not even a
teammate can time another user's prompts; `tenant` lets teammates share cached prefixes (the
tenant's system prompt) at the price of that channel inside the team. Two tenants never share
a salt whatever the setting. Callers cannot pass a salt.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from core.config import Settings
from core.errors import (
    EngineUnavailable,
    InvalidRequest,
    PromptTooLong,
    TenantLLMError,
)
from core.tenancy import (
    DEFAULT_MAX_JSON_SCHEMA_CHARS,
    DEFAULT_MAX_LOGIT_BIAS_TOKENS,
    DEFAULT_MAX_N,
    DEFAULT_MAX_TOP_LOGPROBS,
)

if TYPE_CHECKING:
    from core.tenancy import Tenant

CHAT_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ResponseFormat:
    """Structured output (vLLM's structured outputs): any JSON object, or JSON that follows
    `json_schema` (the schema as JSON text: hashable, and its size is what a tenant bounds)."""

    type: Literal["json_object", "json_schema"]
    json_schema: str | None = None


@dataclass(frozen=True)
class SamplingOptions:
    """The OpenAI sampling parameters beyond the basic ones (all off by default).

    `n` answers per request; `logprobs` returns each token's log-probability with the
    `top_logprobs` most likely alternatives; `logit_bias` adds (token id, bias in -100..100)
    to the logits. Bounded per tenant by `SamplingBounds` (`check_sampling`).
    """

    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    logit_bias: tuple[tuple[int, float], ...] = ()
    response_format: ResponseFormat | None = None


@dataclass(frozen=True)
class SamplingBounds:
    """What one tenant's requests may ask of `SamplingOptions` (the Tenant's fields)."""

    max_n: int = DEFAULT_MAX_N
    max_top_logprobs: int = DEFAULT_MAX_TOP_LOGPROBS
    max_logit_bias_tokens: int = DEFAULT_MAX_LOGIT_BIAS_TOKENS
    max_json_schema_chars: int = DEFAULT_MAX_JSON_SCHEMA_CHARS


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters of one request."""

    max_tokens: int  # per answer: `sampling.n` answers may use up to n * max_tokens
    temperature: float = 0.7
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # benchmarks: always generate max_tokens
    sampling: SamplingOptions = field(default_factory=SamplingOptions)


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability and the most likely alternatives at its place."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class ChoiceOutput:
    """One of the `n` answers, as it advanced in one streamed step."""

    index: int
    text: str  # cumulative text of this answer
    delta: str  # new text of this answer in this step
    finish_reason: str | None = None  # set once this answer is done
    logprobs: tuple[TokenLogprob, ...] = ()  # of this step's new tokens (if asked for)


@dataclass(frozen=True)
class GenerationChunk:
    """One streamed step of an answer.

    `text`, `delta` and `finish_reason` are the first answer's (all the UI and the CLI use);
    `choices` holds every answer that advanced in this step (empty: only the first, as
    `text`/`delta` say). `completion_tokens` counts the tokens of all answers so far, so
    budgets, fair share and the audit count every answer.
    """

    text: str  # cumulative text so far
    delta: str  # new text since the previous chunk
    finished: bool
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens served from the prefix cache (0 if unknown)
    choices: tuple[ChoiceOutput, ...] = ()

    def choice_outputs(self) -> tuple[ChoiceOutput, ...]:
        """The answers that advanced in this step (`choices`, or the first answer alone)."""
        if self.choices:
            return self.choices
        reason = self.finish_reason if self.finished else None
        return (ChoiceOutput(0, self.text, self.delta, reason),)


@dataclass(frozen=True)
class EngineStatus:
    """What the engine is doing right now (admin page, tests)."""

    backend: str
    model: str
    ready: bool
    running: int
    waiting: int


@dataclass(frozen=True)
class PreparedPrompt:
    """A chat prompt after the chat template: what the backend sends, and its size."""

    messages: list[dict[str, str]]
    tokens: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)


def _new_request_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class EngineOptions:
    """Whose request this is and what it may use: the server decides, never the caller.

    Built once per request (`for_tenant` in a chat turn; `Engine.default_options` for callers
    without a tenant declaration: the CLI's direct mode, benchmarks), so the tenant's caps are
    resolved in one place and the prompt fit, the parameter check and the engine all use the
    same numbers. `user_id` (the principal's subject) picks the prefix-cache salt when the
    scope is `user` (see the module docstring); there is no salt here: callers cannot choose
    one. `priority`: lower runs sooner.
    """

    tenant_id: str
    max_prompt_tokens: int  # the effective caps: the tenant's override or the deployment's
    max_output_tokens: int
    user_id: str | None = None
    request_id: str = field(default_factory=_new_request_id)
    priority: int = 0
    lora_path: str | None = None
    bounds: SamplingBounds = field(default_factory=SamplingBounds)
    # The turn's one tokenization (`Engine.prepare_prompt`), reused by `stream_chat` when its
    # messages are the ones given: the remote backend may pay a round trip for it.
    prompt: PreparedPrompt | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.tenant_id, str) or not self.tenant_id:
            raise InvalidRequest("A request must belong to a tenant.")
        for cap in (self.max_prompt_tokens, self.max_output_tokens):
            if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
                raise InvalidRequest("Token caps must be positive integers.")

    @classmethod
    def for_tenant(
        cls,
        settings: Settings,
        tenant: Tenant,
        *,
        user_id: str | None = None,
        request_id: str | None = None,
    ) -> EngineOptions:
        """A request of `tenant`: its own caps where it sets them, its priority and adapter."""
        return cls(
            tenant_id=tenant.id,
            max_prompt_tokens=_prompt_cap(settings, tenant.max_prompt_tokens),
            max_output_tokens=tenant.max_output_tokens or settings.max_output_tokens,
            user_id=user_id,
            request_id=request_id or _new_request_id(),
            priority=int(tenant.priority),
            lora_path=tenant.lora_path,
            bounds=SamplingBounds(
                max_n=tenant.max_n,
                max_top_logprobs=tenant.max_top_logprobs,
                max_logit_bias_tokens=tenant.max_logit_bias_tokens,
                max_json_schema_chars=tenant.max_json_schema_chars,
            ),
        )


def _prompt_cap(settings: Settings, tenant_cap: int | None) -> int:
    # A tenant may lower or raise the deployment's cap, but never beyond the context window
    # (one token is left for the answer).
    return min(tenant_cap or settings.max_prompt_tokens, settings.max_model_len - 1)


@dataclass(frozen=True)
class EngineRequest:
    """Everything about one request that the server decides, not the caller."""

    request_id: str
    tenant_id: str
    cache_salt: str
    priority: int
    max_tokens: int
    lora_path: str | None


def cache_salt(secret_key: str, tenant_id: str, user_id: str | None = None) -> str:
    """The prefix-cache salt of a tenant, or of one user in it (`user_id`).

    Stable, and unguessable without the secret. A user's salt is built from a different
    message than any tenant's (a JSON pair, so no choice of ids can make two messages equal).
    """
    if user_id is None:
        message = f"tenantllm-cache-salt:{tenant_id}"
    else:
        message = "tenantllm-cache-salt-user:" + json.dumps([tenant_id, user_id])
    return hmac.new(secret_key.encode(), message.encode(), hashlib.sha256).hexdigest()


def request_cache_salt(settings: Settings, tenant_id: str, user_id: str | None) -> str:
    """The salt of one request under `settings.prefix_cache_scope`.

    A request with no user (the CLI's local direct tenant, benchmarks) gets its tenant's salt.
    """
    if settings.prefix_cache_scope == "user" and user_id:
        return cache_salt(settings.secret_key, tenant_id, user_id)
    return cache_salt(settings.secret_key, tenant_id)


class Engine(ABC):
    """One per process, shared by all tenants."""

    backend: str = ""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._waiting: set[str] = set()  # request ids submitted, no output yet
        self._running: set[str] = set()  # request ids streaming
        # Tokenizing a long prompt is milliseconds of CPU: off the event loop, on one thread
        # (a fast tokenizer used from two threads at once can fail: "Already borrowed").
        self._tokenizing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")

    @abstractmethod
    async def start(self) -> None:
        """Load the model / connect to the server. Idempotent; slow for the local engine."""

    @abstractmethod
    async def stop(self) -> None:
        """Release the engine (local: shut the engine core process down). Idempotent."""

    @property
    @abstractmethod
    def ready(self) -> bool:
        """True once `start` succeeded and the engine has not died."""

    @property
    def honours_seed(self) -> bool:
        """Whether a request's `seed` may reach this engine; when not, it is dropped (OpenAI
        calls seeded sampling best effort). vLLM's sampler rewinds a seeded request's random
        generator after each chunk of its prefill with CUDA-only calls, so on the CPU the
        first seeded request prefilled in chunks (a long prompt, a busy step) stops the engine
        core, every team's requests with it."""
        return False

    @abstractmethod
    async def status(self) -> EngineStatus:
        """Backend, model, readiness and the number of running / waiting requests."""

    @abstractmethod
    def _prepare(self, messages: list[dict[str, str]]) -> PreparedPrompt:
        """Apply the chat template and count the prompt's tokens."""

    @abstractmethod
    def _generate(
        self, prompt: PreparedPrompt, params: GenerationParams, request: EngineRequest
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Stream one checked request from the backend, aborting it if iteration stops."""

    @abstractmethod
    def _map_error(self, exc: Exception) -> TenantLLMError:
        """A backend failure as a typed error whose message a user may read."""

    def default_options(
        self, tenant_id: str, *, user_id: str | None = None, request_id: str | None = None
    ) -> EngineOptions:
        """Options for a request of `tenant_id` under this engine's deployment caps, with no
        priority and no adapter (for callers that have no tenant declaration)."""
        return EngineOptions(
            tenant_id=tenant_id,
            max_prompt_tokens=_prompt_cap(self.settings, None),
            max_output_tokens=self.settings.max_output_tokens,
            user_id=user_id,
            request_id=request_id or _new_request_id(),
        )

    def count_prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """Tokens of `messages` after the model's chat template (with the generation prompt).

        May block (the remote backend without a local tokenizer asks its server): async code
        awaits `prepare_prompt` instead.
        """
        self._require_ready()
        return self._prepare(_checked_messages(messages)).tokens

    async def prepare_prompt(self, messages: list[dict[str, str]]) -> PreparedPrompt:
        """`messages` after the chat template, counted, without blocking the event loop.

        A chat turn's one tokenization: pass it on as `EngineOptions.prompt`.
        """
        self._require_ready()
        return await self._prepare_async(_checked_messages(messages))

    async def _prepare_async(self, messages: list[dict[str, str]]) -> PreparedPrompt:
        """`_prepare` for the event loop, on the tokenizing thread; a backend whose `_prepare`
        waits on I/O overrides it."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._tokenizing, self._prepare, messages)

    def stream_chat(
        self, messages: list[dict[str, str]], params: GenerationParams, options: EngineOptions
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Stream an answer to `messages` for `options.tenant_id`, chunk by chunk (cumulative
        text).

        The parameters and the caps of `options` are checked here, before the engine sees
        anything, raising `PromptTooLong` / `InvalidRequest`. Closing the iterator (or
        cancelling its task) aborts the request in the engine. `options.prompt`, prepared for
        these very messages, is used as it is (no second tokenization).
        """
        check_params(params, options.max_output_tokens)
        check_sampling(params.sampling, options.bounds)
        self._require_ready()
        if params.seed is not None and not self.honours_seed:
            params = replace(params, seed=None)
        checked = _checked_messages(messages)
        prompt = options.prompt
        if prompt is None or prompt.messages != checked:
            prompt = self._prepare(checked)
        # The context window bounds every request, whatever its options say.
        prompt_cap = min(options.max_prompt_tokens, self.settings.max_model_len - 1)
        if prompt.tokens > prompt_cap:
            raise PromptTooLong(
                f"The prompt is too long ({prompt.tokens} tokens, at most {prompt_cap})."
            )
        request = EngineRequest(
            request_id=options.request_id,
            tenant_id=options.tenant_id,
            cache_salt=request_cache_salt(self.settings, options.tenant_id, options.user_id),
            priority=options.priority,
            # The context window bounds the answer too: never ask for more than is left.
            max_tokens=min(params.max_tokens, self.settings.max_model_len - prompt.tokens),
            lora_path=options.lora_path,
        )
        return self._tracked(prompt, params, request)

    async def _tracked(
        self, prompt: PreparedPrompt, params: GenerationParams, request: EngineRequest
    ) -> AsyncGenerator[GenerationChunk, None]:
        """What every backend's stream shares: the in-flight sets `status` reads (waiting
        until the first chunk, then running) and typed errors for any backend failure."""
        if not self.ready:  # stopped (or dead) between `stream_chat` and the first chunk
            raise EngineUnavailable("The engine has been stopped.")
        rid = request.request_id
        self._waiting.add(rid)
        try:
            # aclosing: when our consumer stops, the backend's stream is closed at once, and
            # closing it aborts the request in the engine.
            async with aclosing(self._generate(prompt, params, request)) as chunks:
                async for chunk in chunks:
                    if rid in self._waiting:
                        self._waiting.discard(rid)
                        self._running.add(rid)
                    yield chunk
        except TenantLLMError:
            raise
        except Exception as exc:
            raise self._map_error(exc) from exc
        finally:
            self._waiting.discard(rid)
            self._running.discard(rid)

    def _require_ready(self) -> None:
        if not self.ready:
            raise EngineUnavailable("The model is not ready yet; try again in a moment.")


def check_params(params: GenerationParams, output_cap: int) -> None:
    """Refuse sampling parameters outside their ranges or above `output_cap` (InvalidRequest).

    The one check, run when a chat turn is prepared (to refuse before anything streams) and
    again by the engine for every request.
    """
    if isinstance(params.max_tokens, bool) or not isinstance(params.max_tokens, int):
        raise InvalidRequest("max_tokens must be an integer.")
    if not 1 <= params.max_tokens <= output_cap:
        raise InvalidRequest(f"max_tokens must be between 1 and {output_cap} for this tenant.")
    if not 0.0 <= params.temperature <= 2.0:
        raise InvalidRequest("temperature must be between 0 and 2.")
    if not 0.0 < params.top_p <= 1.0:
        raise InvalidRequest("top_p must be greater than 0 and at most 1.")
    if any(not isinstance(s, str) or not s for s in params.stop):
        raise InvalidRequest("stop strings must be non-empty text.")


def check_sampling(sampling: SamplingOptions, bounds: SamplingBounds) -> None:
    """Refuse `sampling` outside its ranges or beyond the tenant's `bounds` (InvalidRequest).

    Run when a chat turn is prepared (before retrieval) and again by the engine.
    """
    for name in ("frequency_penalty", "presence_penalty"):
        if not -2.0 <= getattr(sampling, name) <= 2.0:
            raise InvalidRequest(f"{name} must be between -2 and 2.")
    if not 1 <= sampling.n <= bounds.max_n:
        raise InvalidRequest(f"n must be between 1 and {bounds.max_n} for this tenant.")
    if not 0 <= sampling.top_logprobs <= bounds.max_top_logprobs:
        raise InvalidRequest(
            f"top_logprobs must be between 0 and {bounds.max_top_logprobs} for this tenant."
        )
    if sampling.top_logprobs and not sampling.logprobs:
        raise InvalidRequest("top_logprobs needs logprobs set to true.")
    if len(sampling.logit_bias) > bounds.max_logit_bias_tokens:
        raise InvalidRequest(
            f"logit_bias may name at most {bounds.max_logit_bias_tokens} tokens for this tenant."
        )
    if any(token < 0 or not -100.0 <= bias <= 100.0 for token, bias in sampling.logit_bias):
        raise InvalidRequest("logit_bias maps token ids (0 or more) to biases from -100 to 100.")
    schema = sampling.response_format.json_schema if sampling.response_format else None
    if schema is not None and len(schema) > bounds.max_json_schema_chars:
        raise InvalidRequest(
            f"The JSON schema of response_format may have at most "
            f"{bounds.max_json_schema_chars} characters for this tenant ({len(schema)} sent)."
        )


def _checked_messages(messages: Sequence[object]) -> list[dict[str, str]]:
    """Chat messages as plain {role, content} dicts, or InvalidRequest."""
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise InvalidRequest("A chat request needs at least one message.")
    checked = []
    for message in messages:
        if not isinstance(message, dict):
            raise InvalidRequest("Each message must be an object with a role and content.")
        role, content = message.get("role"), message.get("content")
        if role not in CHAT_ROLES or not isinstance(content, str):
            raise InvalidRequest(f"Messages need a role in {CHAT_ROLES} and text content.")
        checked.append({"role": role, "content": content})
    return checked
