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
from core.engine.base import GenerationChunk
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


def _finish_reason(chunk: GenerationChunk | None) -> str:
    return "length" if chunk is not None and chunk.finish_reason == "length" else "stop"


def _usage(turn: ChatTurn, last: GenerationChunk | None) -> dict[str, int]:
    prompt = last.prompt_tokens if last is not None and last.prompt_tokens else turn.prompt_tokens
    completion = last.completion_tokens if last is not None else 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def completion(turn: ChatTurn, model: str, last: GenerationChunk | None) -> ChatCompletion:
    return ChatCompletion.model_validate(
        {
            "id": f"chatcmpl-{turn.request_id}",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "message": {"content": last.text if last is not None else ""},
                    "finish_reason": _finish_reason(last),
                }
            ],
            "usage": _usage(turn, last),
            "tenantllm": extension(turn),
        }
    )


async def _collect(turn: ChatTurn) -> GenerationChunk | None:
    last: GenerationChunk | None = None
    async with aclosing(turn.stream()) as stream:
        async for chunk in stream:
            last = chunk
    return last


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def collect_unless_disconnected(
    request: Request, turn: ChatTurn
) -> tuple[bool, GenerationChunk | None]:
    """Generate the whole answer, but abort it (audited `cancelled`) if the client leaves.

    Returns (finished, last chunk); raises the turn's error if generation failed.
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
    """Server-sent events: role + sources, text deltas, finish + sources, [usage], [DONE]."""
    base: dict[str, Any] = {
        "id": f"chatcmpl-{turn.request_id}",
        "created": int(time.time()),
        "model": model,
    }
    sources = extension(turn)
    yield _sse_chunk(base, {"role": "assistant", "content": ""}, extension=sources)
    last = first
    try:
        async with aclosing(stream):
            if first is not None and first.delta:
                yield _sse_chunk(base, {"content": first.delta})
            async for chunk in stream:
                last = chunk
                if chunk.delta:
                    yield _sse_chunk(base, {"content": chunk.delta})
    except TenantLLMError as exc:
        # The status line is already sent: report the error the way OpenAI streams do.
        yield f"data: {json.dumps(error_body(exc))}\n\n"
        return
    except Exception:
        log.exception("stream of %s failed", turn.request_id)
        yield f"data: {json.dumps(INTERNAL_ERROR)}\n\n"
        return
    yield _sse_chunk(base, {}, finish_reason=_finish_reason(last), extension=sources)
    if include_usage:
        usage = ChatCompletionChunk.model_validate(
            {**base, "choices": [], "usage": _usage(turn, last)}
        )
        yield f"data: {usage.model_dump_json(exclude_none=True)}\n\n"
    yield "data: [DONE]\n\n"


def _sse_chunk(
    base: dict[str, Any],
    delta: dict[str, str],
    *,
    finish_reason: str | None = None,
    extension: TenantLLMExtension | None = None,
) -> str:
    chunk = ChatCompletionChunk.model_validate(
        {
            **base,
            "choices": [{"delta": delta, "finish_reason": finish_reason}],
            "tenantllm": extension,
        }
    )
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
