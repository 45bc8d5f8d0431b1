"""The one shared engine per process, behind one interface for both backends.

`vllm` (core/engine/inprocess.py) runs vLLM's `AsyncLLM` in this process; `openai`
(core/engine/remote.py) talks to a remote OpenAI-compatible vLLM server. Everything both
backends must do the same way lives here: checking parameters and caps before anything reaches
the engine, the `cache_salt`, request ids.

Why the salt: vLLM's prefix cache reuses the KV blocks of an identical prompt prefix, and a
hit is measurably faster, so without a salt one caller could probe which prompts another
sent (CVE-2025-46570). The salt is derived here from the deployment's secret, the tenant id
and, with `TENANTLLM_PREFIX_CACHE_SCOPE=user` (the default), the user: then not even a
teammate can time another user's prompts; `tenant` lets teammates share cached prefixes (the
tenant's system prompt) at the price of that channel inside the team. Two tenants never share
a salt whatever the setting. Callers cannot pass a salt.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field

from core.config import Settings
from core.errors import ConfigError, EngineUnavailable, InvalidRequest, PromptTooLong

CHAT_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters of one request."""

    max_tokens: int
    temperature: float = 0.7
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # benchmarks: always generate max_tokens


@dataclass(frozen=True)
class GenerationChunk:
    """One streamed step of an answer."""

    text: str  # cumulative text so far
    delta: str  # new text since the previous chunk
    finished: bool
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens served from the prefix cache (0 if unknown)


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

    def count_prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """Tokens of `messages` after the model's chat template (with the generation prompt)."""
        self._require_ready()
        return self._prepare(_checked_messages(messages)).tokens

    def stream_chat(
        self,
        messages: list[dict[str, str]],
        params: GenerationParams,
        *,
        tenant_id: str,
        user_id: str | None = None,
        request_id: str | None = None,
        priority: int = 0,
        lora_path: str | None = None,
        max_prompt_tokens: int | None = None,
        max_output_tokens: int | None = None,
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Stream an answer to `messages` for `tenant_id`, chunk by chunk (cumulative text).

        `user_id` (the principal's subject) picks the prefix-cache salt when the scope is
        `user`; see the module docstring.

        The caps (`max_prompt_tokens` / `max_output_tokens`, default: the settings; a tenant
        may override them) are checked here, before the engine sees anything, raising
        `PromptTooLong` / `InvalidRequest`. Closing the iterator (or cancelling its task)
        aborts the request in the engine. `priority`: lower runs sooner.
        """
        if not isinstance(tenant_id, str) or not tenant_id:
            raise InvalidRequest("A request must belong to a tenant.")
        output_cap = max_output_tokens or self.settings.max_output_tokens
        _check_params(params, output_cap)
        self._require_ready()
        prompt = self._prepare(_checked_messages(messages))
        prompt_cap = min(
            max_prompt_tokens or self.settings.max_prompt_tokens, self.settings.max_model_len - 1
        )
        if prompt.tokens > prompt_cap:
            raise PromptTooLong(
                f"The prompt is too long ({prompt.tokens} tokens, at most {prompt_cap})."
            )
        request = EngineRequest(
            request_id=request_id or uuid.uuid4().hex,
            tenant_id=tenant_id,
            cache_salt=request_cache_salt(self.settings, tenant_id, user_id),
            priority=int(priority),
            # The context window bounds the answer too: never ask for more than is left.
            max_tokens=min(params.max_tokens, self.settings.max_model_len - prompt.tokens),
            lora_path=lora_path,
        )
        return self._generate(prompt, params, request)

    def _require_ready(self) -> None:
        if not self.ready:
            raise EngineUnavailable("The model is not ready yet; try again in a moment.")


def _check_params(params: GenerationParams, output_cap: int) -> None:
    if isinstance(params.max_tokens, bool) or not isinstance(params.max_tokens, int):
        raise InvalidRequest("max_tokens must be an integer.")
    if not 1 <= params.max_tokens <= output_cap:
        raise InvalidRequest(f"max_tokens must be between 1 and {output_cap}.")
    if not 0.0 <= params.temperature <= 2.0:
        raise InvalidRequest("temperature must be between 0 and 2.")
    if not 0.0 < params.top_p <= 1.0:
        raise InvalidRequest("top_p must be greater than 0 and at most 1.")
    if any(not isinstance(s, str) or not s for s in params.stop):
        raise InvalidRequest("stop strings must be non-empty text.")


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


def create_engine(settings: Settings) -> Engine:
    """The engine for `settings.engine_backend` (not started: await `start()`)."""
    if settings.engine_backend == "vllm":
        from core.engine.inprocess import VLLMEngine

        return VLLMEngine(settings)
    if settings.engine_backend == "openai":
        from core.engine.remote import RemoteEngine

        return RemoteEngine(settings)
    raise ConfigError(f"TENANTLLM_ENGINE_BACKEND: unknown backend {settings.engine_backend!r}.")
