"""What a tenant is: its record, its prompt template, and the registry the host builds.

A tenant is declared by a plugin (see core/hookspecs.py) and registered by the host
(core/plugins.py), which checks it before anyone can use it. Everything here is plain data:
no I/O, so templates are easy to test on their own.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import TenantNotFound

if TYPE_CHECKING:
    from llama_index.core import VectorStoreIndex
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.vector_stores.types import BasePydanticVectorStore

# Lowercase slug: safe as a directory name, a URL part and an OpenAI "model" name.
TENANT_ID_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{1,31}$")
#: A Chroma server address (the `chroma_url` setting's pattern, empty excluded).
CHROMA_URL_PATTERN = re.compile(r"^https?://[^\s/?#]+(/[^\s?#]*)?$")

#: Builds the tenant's vector store inside `directory` (chosen by the host, never by a user).
StoreFactory = Callable[[str, Path], "BasePydanticVectorStore"]
#: Builds the retriever over the tenant's own index; `top_k` is the number of chunks wanted.
RetrieverFactory = Callable[["VectorStoreIndex", int], "BaseRetriever"]


@dataclass(frozen=True)
class Source:
    """One retrieved chunk, shown under an answer."""

    document_id: str
    filename: str
    location: str
    snippet: str
    score: float


DEFAULT_USER_TEMPLATE = (
    "Answer the question using only the context below. If the context does not contain "
    "the answer, say that you do not know.\n\nContext:\n{context}\n\nQuestion: {question}"
)
DEFAULT_SOURCE_TEMPLATE = "[{n}] {filename} ({location}):\n{snippet}"
DEFAULT_NO_CONTEXT = "(no matching documents)"

# Variables each template may use, and those it must use.
_USER_VARS = {"context", "question", "tenant_name"}
_USER_REQUIRED = {"context", "question"}
_SOURCE_VARS = {"n", "filename", "location", "snippet"}
_SOURCE_REQUIRED = {"snippet"}
_SYSTEM_VARS = {"tenant_name"}

# OpenAI sampling bounds (issue 16): a tenant's defaults, and the most any tenant may allow.
DEFAULT_MAX_N = 4  # answers per request: each one costs a whole generation
LIMIT_MAX_N = 16
DEFAULT_MAX_TOP_LOGPROBS = 5
LIMIT_MAX_TOP_LOGPROBS = 20  # vLLM's default max_logprobs, and OpenAI's own limit
DEFAULT_MAX_LOGIT_BIAS_TOKENS = 300
LIMIT_MAX_LOGIT_BIAS_TOKENS = 1024
# A JSON schema is compiled into a grammar per request: its size bounds that work.
DEFAULT_MAX_JSON_SCHEMA_CHARS = 16_000
LIMIT_MAX_JSON_SCHEMA_CHARS = 200_000


def _template_fields(template: str) -> set[str]:
    """Names of the `{fields}` a str.format template uses (raises ValueError if malformed)."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def _check(label: str, template: str, allowed: set[str], required: set[str]) -> list[str]:
    try:
        used = _template_fields(template)
    except ValueError as exc:
        return [f"{label} template is malformed ({exc})"]
    problems = [f"{label} template is missing variable {{{v}}}" for v in sorted(required - used)]
    problems += [f"{label} template uses unknown variable {{{v}}}" for v in sorted(used - allowed)]
    return problems


@dataclass(frozen=True)
class PromptTemplate:
    """How a tenant talks: its system prompt and the layout of context, sources and history.

    `system` is the tenant's voice. `user` lays out the final user message and must contain
    `{context}` and `{question}`; `source` formats one retrieved chunk (`{n}`, `{filename}`,
    `{location}`, `{snippet}`); `no_context` replaces `{context}` when nothing matched.
    History turns go, unchanged, between the system message and the final user message.
    Templates use `str.format` fields; user text is substituted, never parsed as a template.
    """

    system: str
    user: str = DEFAULT_USER_TEMPLATE
    source: str = DEFAULT_SOURCE_TEMPLATE
    no_context: str = DEFAULT_NO_CONTEXT
    tenant_name: str = ""

    def problems(self) -> list[str]:
        """Everything wrong with this template (empty when it can be used)."""
        return (
            _check("system", self.system, _SYSTEM_VARS, set())
            + _check("user", self.user, _USER_VARS, _USER_REQUIRED)
            + _check("source", self.source, _SOURCE_VARS, _SOURCE_REQUIRED)
        )

    def render_context(self, sources: Sequence[Source]) -> str:
        """The sources laid out with `source`, numbered from 1 (or `no_context`)."""
        if not sources:
            return self.no_context
        return "\n\n".join(
            self.source.format(
                n=n, filename=s.filename, location=s.location, snippet=s.snippet.strip()
            )
            for n, s in enumerate(sources, start=1)
        )

    def render(
        self,
        *,
        question: str,
        sources: Sequence[Source],
        history: Sequence[Mapping[str, str]],
    ) -> list[dict[str, str]]:
        """Chat messages for the engine: system, then history, then the question with context."""
        system = self.system.format(tenant_name=self.tenant_name)
        user = self.user.format(
            context=self.render_context(sources), question=question, tenant_name=self.tenant_name
        )
        messages = [{"role": "system", "content": system}]
        messages += [{"role": m["role"], "content": m["content"]} for m in history]
        messages.append({"role": "user", "content": user})
        return messages


@dataclass(frozen=True)
class Tenant:
    """One team: its identity, its voice and (optionally) its own retrieval parts.

    `retriever_factory` and `store_factory` are None for the core defaults (see
    core/knowledge/vectorstore.py). The tenant's retriever is the dense side of hybrid
    retrieval, fused with BM25 by `keyword_weight` (0 keeps the plugin's retriever alone).
    `plugin` is set by the host to the plugin that registered it.
    """

    id: str
    display_name: str
    description: str
    prompt: PromptTemplate
    top_k: int | None = None
    # The answer temperature when a request names none (the chat, the CLI, an API call without
    # one); None: 0.7 (core/chat/prompt.py). The built-in teams answer greedily (0), the best
    # of the demo answer-quality set on the bundled model (bench/answer_quality.py).
    temperature: float | None = None
    priority: int = 0
    # fair share (core/scheduling): this team's share of the engine under contention, relative
    # to the other teams' (2.0 gets twice the tokens of a team at 1.0); an admin may override it.
    weight: float = 1.0
    max_prompt_tokens: int | None = None
    max_output_tokens: int | None = None
    lora_path: str | None = None
    retriever_factory: RetrieverFactory | None = None
    store_factory: StoreFactory | None = None
    # scale-out (issue 19; core/knowledge/chroma_server.py): this team's own Chroma server
    # (`http(s)://host:port`), for a separate process per team; None: the `chroma_url` setting.
    # A `store_factory` wins over both.
    chroma_url: str | None = None
    # retrieval (issue 18): this team's weight of BM25 in hybrid retrieval (None: the setting).
    keyword_weight: float | None = None
    # retention (issue 15, item 5; core/retention): delete conversations idle this many days,
    # drop prompt text from audit rows older than this many days. None keeps them; an admin
    # may override either (`tenantllm retention set`).
    retention_conversation_days: int | None = None
    retention_prompt_text_days: int | None = None
    # response cache (issue 19; core/chat/response_cache.py): reuse this team's answers to
    # deterministic requests (temperature 0) for this many seconds, in Redis; 0 (default): off.
    # Teammates then share answers, so one can tell by the speed that an identical prompt was
    # asked in the team within that time (as with TENANTLLM_PREFIX_CACHE_SCOPE=tenant).
    response_cache_seconds: int = 0
    # OpenAI sampling bounds (issue 16; core/engine/base.py `check_sampling`): the most answers
    # per request (`n`), alternatives per token (`top_logprobs`), `logit_bias` entries and
    # characters of a `response_format` JSON schema (0 refuses JSON schemas) this team may ask.
    max_n: int = DEFAULT_MAX_N
    max_top_logprobs: int = DEFAULT_MAX_TOP_LOGPROBS
    max_logit_bias_tokens: int = DEFAULT_MAX_LOGIT_BIAS_TOKENS
    max_json_schema_chars: int = DEFAULT_MAX_JSON_SCHEMA_CHARS
    plugin: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def problems(self) -> list[str]:
        """Everything wrong with this declaration (empty when it can be registered)."""
        problems = []
        if not isinstance(self.id, str) or not TENANT_ID_PATTERN.match(self.id):
            problems.append(
                f"invalid tenant id {self.id!r} (lowercase letters, digits, '-' or '_', "
                "2-32 characters, starting with a letter)"
            )
        if not isinstance(self.prompt, PromptTemplate):
            problems.append("prompt must be a core.tenancy.PromptTemplate")
        else:
            problems += self.prompt.problems()
        if self.top_k is not None and not 1 <= self.top_k <= 50:
            problems.append("top_k must be between 1 and 50")
        if self.keyword_weight is not None and not 0.0 <= self.keyword_weight <= 1.0:
            problems.append("keyword_weight must be between 0 and 1")
        for name in ("retention_conversation_days", "retention_prompt_text_days"):
            days = getattr(self, name)
            if days is not None and (not isinstance(days, int) or not 1 <= days <= 36500):
                problems.append(f"{name} must be a number of days from 1 to 36500, or None")
        if not isinstance(self.weight, int | float) or not 0 < self.weight <= 1000:
            problems.append("weight must be above 0 and at most 1000")
        temperature = self.temperature
        if temperature is not None and (
            isinstance(temperature, bool) or not isinstance(temperature, int | float)
            or not 0 <= temperature <= 2
        ):  # fmt: skip
            problems.append("temperature must be a number from 0 to 2, or None")
        cache = self.response_cache_seconds
        if isinstance(cache, bool) or not isinstance(cache, int) or not 0 <= cache <= 604800:
            problems.append("response_cache_seconds must be a whole number from 0 to 604800")
        if self.chroma_url is not None and not (
            isinstance(self.chroma_url, str) and CHROMA_URL_PATTERN.match(self.chroma_url)
        ):
            problems.append("chroma_url must be an http:// or https:// address, or None")
        return problems + self._sampling_problems()

    def _sampling_problems(self) -> list[str]:
        """What is wrong with the sampling bounds (each a whole number in its range)."""
        problems = []
        for name, low, high in (
            ("max_n", 1, LIMIT_MAX_N),
            ("max_top_logprobs", 0, LIMIT_MAX_TOP_LOGPROBS),
            ("max_logit_bias_tokens", 0, LIMIT_MAX_LOGIT_BIAS_TOKENS),
            ("max_json_schema_chars", 0, LIMIT_MAX_JSON_SCHEMA_CHARS),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                problems.append(f"{name} must be a whole number from {low} to {high}")
        return problems


@dataclass
class PromptDraft:
    """A rendered prompt on its way to the engine; prompt hooks may rewrite or refuse it.

    Hooks rewrite by replacing or editing `messages`, record why in `flags` (these go to the
    audit log, e.g. "redacted"), and refuse by raising `core.errors.PromptRejected`.
    """

    tenant: Tenant
    user: str
    question: str
    messages: list[dict[str, str]]
    flags: list[str] = field(default_factory=list)


class TenantRegistry:
    """The tenants of this deployment, by id; built once by `core.plugins.load_tenants`."""

    def __init__(self, tenants: Sequence[Tenant]) -> None:
        self._tenants = {t.id: t for t in tenants}

    def get(self, tenant_id: str) -> Tenant:
        """The tenant with this id; raises TenantNotFound."""
        tenant = self._tenants.get(tenant_id) if isinstance(tenant_id, str) else None
        if tenant is None:
            raise TenantNotFound(f"No tenant named {tenant_id!r}.")
        return tenant

    def all(self) -> list[Tenant]:
        """Every tenant, sorted by id."""
        return [self._tenants[k] for k in sorted(self._tenants)]

    def __contains__(self, tenant_id: object) -> bool:
        return tenant_id in self._tenants
