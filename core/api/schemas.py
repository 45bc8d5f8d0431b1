"""Request and response models of the OpenAI-compatible API (they also document /docs).

Requests forbid unknown fields: a parameter tenantllm does not implement is refused with a
400 naming it, never silently ignored. The only accepted-but-unused fields are `user` and
`name` (identity comes from the credential). Every OpenAI sampling parameter the engine
supports passes through (`frequency_penalty`, `presence_penalty`, `stop`, `seed`, `n`,
`logprobs`/`top_logprobs`, `logit_bias`, `response_format` with JSON mode and JSON schema):
the ranges are checked here, the tenant's own bounds (`n`, `top_logprobs`, `logit_bias`
entries, JSON schema size; core/tenancy.py) by the chat turn. What would undo tenancy stays
refused: `system`/`developer` messages (each tenant's assistant has its own system prompt).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from core.engine.base import ResponseFormat, SamplingOptions
from core.tenancy import LIMIT_MAX_LOGIT_BIAS_TOKENS, LIMIT_MAX_N, LIMIT_MAX_TOP_LOGPROBS

MAX_MESSAGES = 200
MAX_CONTENT_CHARS = 100_000
MAX_SEED = 2**63 - 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    """A text part of a message (`{"type": "text", "text": ...}`); other part types are refused."""

    type: Literal["text"]
    text: str = Field(max_length=MAX_CONTENT_CHARS)


class ChatMessage(_Strict):
    """One message. Only `user` and `assistant`: the tenant's template owns the system prompt."""

    role: Literal["user", "assistant"]
    content: (
        Annotated[str, Field(max_length=MAX_CONTENT_CHARS)]
        | Annotated[list[TextPart], Field(max_length=100)]
    )
    name: str | None = Field(None, max_length=64, description="Accepted and ignored.")

    @field_validator("role", mode="before")
    @classmethod
    def _explain_refused_roles(cls, value: object) -> object:
        if value in ("system", "developer"):
            raise ValueError(
                f"'{value}' messages are not accepted: each tenant's assistant has its own "
                "system prompt, set by the deployment. Send user and assistant messages only."
            )
        if value in ("tool", "function"):
            raise ValueError("tool calling is not supported.")
        return value

    def text(self) -> str:
        """The message's text (text parts joined by newlines)."""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class StreamOptions(_Strict):
    """Streaming options (OpenAI): `include_usage` adds a final chunk with token counts."""

    include_usage: bool = False


class TextFormat(_Strict):
    """`response_format` `text`: free text (the default)."""

    type: Literal["text"]


class JsonObjectFormat(_Strict):
    """`response_format` `json_object` (JSON mode): the answer is one JSON object."""

    type: Literal["json_object"]


class JsonSchemaSpec(_Strict):
    """The schema of `response_format` `json_schema`; `strict` is accepted: it always is."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = Field(None, max_length=1000)
    schema_: dict[str, Any] = Field(alias="schema", description="A JSON Schema object.")
    strict: bool | None = None


class JsonSchemaFormat(_Strict):
    """`response_format` `json_schema`: the answer is JSON that follows the schema."""

    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormatIn = Annotated[
    TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")
]


class ChatCompletionRequest(_Strict):
    """`POST /v1/chat/completions`. `model` is a tenant id (see `GET /v1/models`)."""

    model: str = Field(min_length=1, max_length=100, description="Tenant id, e.g. `sales`.")
    messages: list[ChatMessage] = Field(
        min_length=1,
        max_length=MAX_MESSAGES,
        description="The last message is the question (role user); earlier ones are history.",
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, description="Capped per tenant.")
    max_completion_tokens: int | None = Field(None, ge=1, description="Same as max_tokens.")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = Field(None, description="Up to 4 stop strings.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    n: int | None = Field(
        None, ge=1, le=LIMIT_MAX_N, description="Answers to generate; capped per tenant."
    )
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logprobs: bool | None = Field(None, description="Return each token's log-probability.")
    top_logprobs: int | None = Field(
        None,
        ge=0,
        le=LIMIT_MAX_TOP_LOGPROBS,
        description="Most likely alternatives per token (needs logprobs); capped per tenant.",
    )
    logit_bias: dict[str, float] | None = Field(
        None, description="Token id (as text) -> bias from -100 to 100; capped per tenant."
    )
    response_format: ResponseFormatIn | None = None
    user: str | None = Field(None, max_length=256, description="Accepted and ignored.")

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > 4 or any(not s or len(s) > 200 for s in stops):
            raise ValueError("stop takes at most 4 non-empty strings of up to 200 characters.")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _check_top_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        # A field validator (not the model's): the 400 then names `top_logprobs`.
        if value and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs set to true.")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return value
        if len(value) > LIMIT_MAX_LOGIT_BIAS_TOKENS:
            raise ValueError(f"at most {LIMIT_MAX_LOGIT_BIAS_TOKENS} tokens may be biased.")
        for token, bias in value.items():
            if not token.isascii() or not token.isdigit() or len(token) > 9:
                raise ValueError(f"keys must be token ids (whole numbers), not {token[:20]!r}.")
            if not -100.0 <= bias <= 100.0:
                raise ValueError("biases must be between -100 and 100.")
        return value

    @model_validator(mode="after")
    def _check_messages(self) -> ChatCompletionRequest:
        if self.messages[-1].role != "user":
            raise ValueError("the last message must have role 'user' (it is the question).")
        if (
            self.max_tokens is not None
            and self.max_completion_tokens is not None
            and self.max_tokens != self.max_completion_tokens
        ):
            raise ValueError("max_tokens and max_completion_tokens disagree; send one.")
        return self

    def sampling_options(self) -> SamplingOptions:
        """The request's other sampling parameters, with OpenAI's defaults filled in."""
        response_format = None
        if isinstance(self.response_format, JsonObjectFormat):
            response_format = ResponseFormat("json_object")
        elif isinstance(self.response_format, JsonSchemaFormat):
            schema = json.dumps(self.response_format.json_schema.schema_, separators=(",", ":"))
            response_format = ResponseFormat("json_schema", schema)
        return SamplingOptions(
            frequency_penalty=self.frequency_penalty or 0.0,
            presence_penalty=self.presence_penalty or 0.0,
            n=self.n or 1,
            logprobs=bool(self.logprobs),
            top_logprobs=self.top_logprobs or 0,
            logit_bias=tuple((int(t), float(b)) for t, b in (self.logit_bias or {}).items()),
            response_format=response_format,
        )

    def stop_tuple(self) -> tuple[str, ...]:
        """`stop` as a tuple of strings."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class SourceOut(BaseModel):
    """One retrieved chunk of the tenant's documents that was given to the model."""

    document_id: str
    filename: str
    location: str
    snippet: str
    score: float


class TenantLLMExtension(BaseModel):
    """tenantllm's extension field: where the answer came from."""

    request_id: str = Field(description="Also in the audit log and the x-request-id header.")
    sources: list[SourceOut]


class AssistantMessage(BaseModel):
    """The answer."""

    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(BaseModel):
    """One of the most likely tokens at a place (`bytes`: its UTF-8 bytes)."""

    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    """A generated token's log-probability, with the `top_logprobs` most likely tokens."""

    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    """The log-probabilities of a choice's tokens (`logprobs: true`)."""

    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class Choice(BaseModel):
    """One choice of a completion (`n` of them, `index` 0 to n - 1)."""

    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: ChoiceLogprobs | None = None


class Usage(BaseModel):
    """Real token counts from the engine (prompt after the chat template)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    """A non-streamed completion."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    tenantllm: TenantLLMExtension


class Delta(BaseModel):
    """New text of a streamed chunk."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    """One choice of a streamed chunk (its `index` says which of the `n`)."""

    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed completion (`data: {...}`; ends with `[DONE]`).

    The first and the last chunk carry `tenantllm` (the sources); with
    `stream_options.include_usage` a final chunk with empty `choices` carries `usage`.
    """

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    tenantllm: TenantLLMExtension | None = None


class ModelInfo(BaseModel):
    """A tenant, as an OpenAI model (`id` is the tenant id)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    display_name: str
    description: str


class ModelList(BaseModel):
    """The tenants this credential may chat with."""

    object: Literal["list"] = "list"
    data: list[ModelInfo]


class ErrorDetail(BaseModel):
    """OpenAI error body."""

    message: str
    type: str
    code: str
    param: str | None = None


class ErrorResponse(BaseModel):
    """Every error answer: `{"error": {"message", "type", "code", "param"}}`."""

    error: ErrorDetail
