"""A fake engine for tests about the product's logic, not about vLLM (in the spirit of llm's
`MockModel`).

`FakeEngine` implements the real `Engine` interface: only the backend is fake, so everything
`Engine.stream_chat` does (the caps, the parameter and message checks, the cache salt, the
in-flight bookkeeping `status` reads, typed errors) is the product's own code. It starts at
once, and:

- counts tokens plausibly: words and punctuation of a simple chat template's text;
- answers deterministically from what it was given: by default it echoes the system prompt
  and the last user message (the question with its sources), so a test can assert on what the
  product sent; `enqueue` scripts the next answers instead;
- streams one word per chunk, at most `max_tokens` of them, suspending before each one (so a
  cancellation lands inside the engine's stream, as with the real engine);
- records every request it accepted (`calls`: messages, parameters, options) and every stream
  that was closed before its end (`closed`: request ids).
"""

from __future__ import annotations

import asyncio
import copy
import re
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from core.config import Settings
from core.engine.base import (
    Engine,
    EngineOptions,
    EngineRequest,
    EngineStatus,
    GenerationChunk,
    GenerationParams,
    PreparedPrompt,
)
from core.errors import EngineUnavailable, TenantLLMError

_TOKEN = re.compile(r"\w+|[^\w\s]")
_WORD = re.compile(r"\s*\S+")


def count_tokens(text: str) -> int:
    """A plausible token count: words and punctuation marks."""
    return len(_TOKEN.findall(text))


def echo(messages: list[dict[str, str]]) -> str:
    """The default answer: what the engine saw (the system prompt, the last user message)."""
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    return f"Fake answer. System: {system} User: {messages[-1]['content']}"


@dataclass(frozen=True)
class FakeCall:
    """One request the engine accepted, as it got it."""

    messages: list[dict[str, str]]
    params: GenerationParams
    options: EngineOptions


class FakeEngine(Engine):
    """An `Engine` whose backend is a few lines of Python: deterministic, instant, recorded."""

    backend = "fake"

    def __init__(self, settings: Settings, *, token_delay_s: float = 0.0) -> None:
        super().__init__(settings)
        self.token_delay_s = token_delay_s
        self.calls: list[FakeCall] = []
        self.closed: list[str] = []  # request ids whose stream was closed before its end
        self._replies: deque[str] = deque()
        self._started = False

    def enqueue(self, *replies: str) -> None:
        """Answer the next requests with `replies`, in order (then with the echo again)."""
        self._replies.extend(replies)

    @property
    def ready(self) -> bool:
        """True between `start` and `stop`."""
        return self._started

    async def start(self) -> None:
        """Nothing to load."""
        self._started = True

    async def stop(self) -> None:
        """Nothing to release."""
        self._started = False

    async def status(self) -> EngineStatus:
        """What `Engine`'s bookkeeping knows: streams before / after their first chunk."""
        return EngineStatus(
            self.backend, self.settings.model, self.ready, len(self._running), len(self._waiting)
        )

    def stream_chat(
        self, messages: list[dict[str, str]], params: GenerationParams, options: EngineOptions
    ) -> AsyncGenerator[GenerationChunk, None]:
        """The real `Engine.stream_chat`; a request it accepts is recorded in `calls`."""
        stream = super().stream_chat(messages, params, options)
        self.calls.append(FakeCall(copy.deepcopy(messages), params, options))
        return stream

    def _prepare(self, messages: list[dict[str, str]]) -> PreparedPrompt:
        text = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + "<|assistant|>\n"
        return PreparedPrompt(messages=messages, tokens=count_tokens(text), text=text)

    async def _generate(
        self, prompt: PreparedPrompt, params: GenerationParams, request: EngineRequest
    ) -> AsyncGenerator[GenerationChunk, None]:
        reply = self._replies.popleft() if self._replies else echo(prompt.messages)
        words = _WORD.findall(reply)[: request.max_tokens]
        truncated = len(_WORD.findall(reply)) > request.max_tokens
        text, done = "", False
        try:
            if not words:
                done = True
                yield GenerationChunk("", "", True, "stop", prompt.tokens, 0)
            for n, word in enumerate(words, start=1):
                # A suspension point per token, like waiting for the real engine's next step.
                await asyncio.sleep(self.token_delay_s)
                text += word
                done = n == len(words)
                reason = ("length" if truncated else "stop") if done else None
                yield GenerationChunk(text, word, done, reason, prompt.tokens, n)
        finally:
            if not done:
                self.closed.append(request.request_id)

    def _map_error(self, exc: Exception) -> TenantLLMError:
        return EngineUnavailable("The model failed to answer; try again.")
