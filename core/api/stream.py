"""Turning a chat turn into OpenAI responses: one JSON completion, or server-sent events.

Both abort the generation when the client goes away: the non-streamed path watches for the
disconnect while generating; the streamed path closes the turn's stream when the response
ends, however it ends (see `ClosingStreamingResponse`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from core.api.errors import INTERNAL_ERROR
from core.api.schemas import ChatCompletion, ChatCompletionChunk, SourceOut, TenantLLMExtension
from core.chat.turn import ChatTurn
from core.engine.base import ChoiceOutput, GenerationChunk, TokenLogprob
from core.errors import TenantLLMError
from core.web import error_body

log = logging.getLogger(__name__)


def extension(turn: ChatTurn) -> TenantLLMExtension:
    sources = [
        SourceOut(
            document_id=s.document_id,
            filename=s.filename,
            location=s.location,
            snippet=s.snippet,
            score=s.score,
        )
        for s in turn.sources
    ]
    return TenantLLMExtension(request_id=turn.request_id, sources=sources)


# OpenAI's stand-in for a token the model gives no chance (JSON has no -Infinity).
_LOWEST_LOGPROB = -9999.0


class Answers:
    """The `n` answers of a turn, put together from its chunks: text, finish, logprobs.

    Usage comes from the last chunk, whose completion tokens count every answer.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.text = dict.fromkeys(range(n), "")
        self.finish: dict[int, str] = {}
        self.logprobs: dict[int, list[TokenLogprob]] = {i: [] for i in range(n)}
        self.last: GenerationChunk | None = None

    def add(self, chunk: GenerationChunk) -> tuple[ChoiceOutput, ...]:
        """Take in one chunk; returns the answers that advanced in it."""
        self.last = chunk
        outputs = chunk.choice_outputs()
        for out in outputs:
            self.text[out.index] = out.text
            if out.finish_reason:
                self.finish[out.index] = out.finish_reason
            self.logprobs.setdefault(out.index, []).extend(out.logprobs)
        return outputs

    def finish_reason(self, index: int) -> str:
        """The OpenAI finish reason of one answer: `length` when cut by max_tokens."""
        return "length" if self.finish.get(index) == "length" else "stop"

    def usage(self, turn: ChatTurn) -> dict[str, int]:
        """Prompt tokens and the completion tokens of all answers."""
        last = self.last
        prompt = last.prompt_tokens if last is not None and last.prompt_tokens else 0
        prompt = prompt or turn.prompt_tokens
        completion = last.completion_tokens if last is not None else 0
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }


def logprobs_body(entries: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> dict[str, Any]:
    """Token logprobs in the OpenAI shape (`{"content": [...], "refusal": null}`)."""

    def top(token: str, logprob: float) -> dict[str, Any]:
        value = max(logprob, _LOWEST_LOGPROB)
        return {"token": token, "logprob": value, "bytes": list(token.encode())}

    content = [
        {**top(e.token, e.logprob), "top_logprobs": [top(t, lp) for t, lp in e.top]}
        for e in entries
    ]
    return {"content": content, "refusal": None}


def completion(
    turn: ChatTurn, model: str, answers: Answers, *, with_logprobs: bool
) -> ChatCompletion:
    """The non-streamed completion: one choice per answer."""
    choices = [
        {
            "index": i,
            "message": {"content": answers.text[i]},
            "finish_reason": answers.finish_reason(i),
            "logprobs": logprobs_body(answers.logprobs[i]) if with_logprobs else None,
        }
        for i in range(answers.n)
    ]
    return ChatCompletion.model_validate(
        {
            "id": f"chatcmpl-{turn.request_id}",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": answers.usage(turn),
            "tenantllm": extension(turn),
        }
    )


async def _collect(turn: ChatTurn) -> Answers:
    answers = Answers(turn.params.sampling.n)
    async with aclosing(turn.stream()) as stream:
        async for chunk in stream:
            answers.add(chunk)
    return answers


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def collect_unless_disconnected(
    request: Request, turn: ChatTurn
) -> tuple[bool, Answers | None]:
    """Generate the whole answer, but abort it (audited `cancelled`) if the client leaves.

    Returns (finished, the answers); raises the turn's error if generation failed.
    """
    generation = asyncio.create_task(_collect(turn))
    watcher = asyncio.create_task(_wait_for_disconnect(request))
    try:
        await asyncio.wait({generation, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not generation.done():
        generation.cancel()  # the chat turn aborts the engine request and audits it
        with contextlib.suppress(asyncio.CancelledError):
            await generation
        turn.abandon()  # if the task was cancelled before it started streaming
        return False, None
    return True, generation.result()


async def first_chunk(stream: AsyncGenerator[GenerationChunk, None]) -> GenerationChunk | None:
    try:
        return await anext(stream)
    except StopAsyncIteration:
        return None
    except BaseException:
        await stream.aclose()
        raise


async def sse_events(
    turn: ChatTurn,
    stream: AsyncGenerator[GenerationChunk, None],
    first: GenerationChunk | None,
    model: str,
    include_usage: bool,
) -> AsyncIterator[str]:
    """Server-sent events: role + sources, text deltas (one event per answer that advanced,
    with its logprobs if asked), finish of every answer + sources, [usage], [DONE]."""
    base: dict[str, Any] = {
        "id": f"chatcmpl-{turn.request_id}",
        "created": int(time.time()),
        "model": model,
    }
    sampling = turn.params.sampling
    answers = Answers(sampling.n)
    sources = extension(turn)
    role = {"delta": {"role": "assistant", "content": ""}}
    yield _sse_chunk(base, [{"index": i, **role} for i in range(answers.n)], extension=sources)
    try:
        async with aclosing(stream):
            if first is not None:
                for event in _delta_events(base, answers.add(first), sampling.logprobs):
                    yield event
            async for chunk in stream:
                for event in _delta_events(base, answers.add(chunk), sampling.logprobs):
                    yield event
    except TenantLLMError as exc:
        # The status line is already sent: report the error the way OpenAI streams do.
        yield f"data: {json.dumps(error_body(exc))}\n\n"
        return
    except Exception:
        log.exception("stream of %s failed", turn.request_id)
        yield f"data: {json.dumps(INTERNAL_ERROR)}\n\n"
        return
    finish = [
        {"index": i, "delta": {}, "finish_reason": answers.finish_reason(i)}
        for i in range(answers.n)
    ]
    yield _sse_chunk(base, finish, extension=sources)
    if include_usage:
        usage = ChatCompletionChunk.model_validate(
            {**base, "choices": [], "usage": answers.usage(turn)}
        )
        yield f"data: {usage.model_dump_json(exclude_none=True)}\n\n"
    yield "data: [DONE]\n\n"


def _delta_events(
    base: dict[str, Any], outputs: tuple[ChoiceOutput, ...], with_logprobs: bool
) -> list[str]:
    """One event per answer with new text (or new tokens' logprobs) in this step."""
    events = []
    for out in outputs:
        if not out.delta and not (with_logprobs and out.logprobs):
            continue
        choice: dict[str, Any] = {"index": out.index, "delta": {"content": out.delta}}
        if with_logprobs:
            choice["logprobs"] = logprobs_body(out.logprobs)
        events.append(_sse_chunk(base, [choice]))
    return events


def _sse_chunk(
    base: dict[str, Any],
    choices: list[dict[str, Any]],
    *,
    extension: TenantLLMExtension | None = None,
) -> str:
    chunk = ChatCompletionChunk.model_validate({**base, "choices": choices, "tenantllm": extension})
    return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"


class ClosingStreamingResponse(StreamingResponse):
    """A streaming response that always closes its body iterator when the response ends.

    When the client disconnects while the body is parked at a `yield`, Starlette just stops
    iterating; closing here makes the chat turn abort the engine request and audit
    `cancelled` now, instead of whenever the generator is garbage-collected.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the response; close the body iterator however sending ended."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()
