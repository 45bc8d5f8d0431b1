"""Request and response models of the OpenAI-compatible API (they also document /docs).

Requests forbid unknown fields: a parameter tenantllm does not implement is refused with a
400 naming it, never silently ignored. The only accepted-but-unused fields are documented
here: `user` and `name` (identity comes from the credential), `n` (must be 1) and
`stream_options.include_usage`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
    n: int | None = Field(None, ge=1, le=1, description="Only 1 is supported.")
    user: str | None = Field(None, max_length=256, description="Accepted and ignored.")

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > 4 or any(not s or len(s) > 200 for s in stops):
            raise ValueError("stop takes at most 4 non-empty strings of up to 200 characters.")
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


class Choice(BaseModel):
    """The one choice of a completion."""

    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


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
    """The one choice of a streamed chunk."""

    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None


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
