"""What a caller asks of a chat turn: `ChatRequest`, the same for the UI, the API and the CLI."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from core.engine.base import SamplingOptions

Channel = Literal["ui", "api", "cli"]


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
    # The API's other OpenAI sampling parameters (n, penalties, logprobs, logit_bias, JSON).
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    channel: Channel = "ui"
    client_ip: str | None = None
    user_agent: str | None = None
