"""The OpenAI-compatible REST API: `GET /v1/models`, `POST /v1/chat/completions`.

A model is a tenant (`model` = tenant id). The credential is `Authorization: Bearer` with an
API key (`tlm_...`) or an OIDC access token; the principal it names decides which tenants may
be used, never a field of the request. Every completion is the same chat turn as the UI's
(`core.chat`), audited with action `api_chat`. Retrieval sources travel in the extension field
`tenantllm` (see core/api_schemas.py). Errors use the OpenAI shape (core/api_errors.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import Receive, Scope, Send

from core.api_errors import OpenAIRoute, error_body
from core.api_schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ErrorResponse,
    ModelInfo,
    ModelList,
    SourceOut,
    TenantLLMExtension,
)
from core.auth import principal_from_bearer
from core.chat import ChatRequest, ChatTurn, start_chat_turn
from core.engine import GenerationChunk
from core.errors import NotAuthenticated, PermissionDenied, TenantLLMError
from core.identity import Principal
from core.rbac import authorize
from core.services import Services

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (400, "Invalid or unsupported parameter"),
        (401, "Missing, invalid, expired or revoked credential"),
        (403, "This credential may not use this tenant"),
        (404, "Unknown model (tenant)"),
        (429, "Rate limited (see Retry-After)"),
        (503, "The engine is starting or overloaded"),
    )
}

_INTERNAL_ERROR = {
    "error": {
        "message": "Internal error; it has been logged.",
        "type": "server_error",
        "code": "internal_error",
        "param": None,
    }
}
log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible API"], route_class=OpenAIRoute)
_bearer = HTTPBearer(
    auto_error=False, description="An API key (`tlm_...`) or an OIDC access token."
)


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def current_principal(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> Principal:
    """The principal named by the bearer credential (401 without a valid one)."""
    if credentials is None or not credentials.credentials:
        raise NotAuthenticated(
            "Missing credential: send 'Authorization: Bearer <API key or access token>'."
        )
    # Key lookups hit the database and JWT checks may fetch the IdP's keys: not on the loop.
    principal = await run_in_threadpool(principal_from_bearer, credentials.credentials)
    request.state.principal = principal  # for auditing refusals that happen after this
    return principal


def _may_chat(principal: Principal, tenant_id: str) -> bool:
    try:
        authorize(principal, tenant_id, "chat")
    except PermissionDenied:
        return False
    return True


def _model_info(services: Services, tenant_id: str) -> ModelInfo:
    tenant = services.tenants.get(tenant_id)
    return ModelInfo(
        id=tenant.id,
        created=0,
        owned_by=tenant.plugin or "tenantllm",
        display_name=tenant.display_name,
        description=tenant.description,
    )


@router.get("/models", response_model=ModelList, responses=_ERRORS)
async def list_models(
    request: Request, principal: Principal = Depends(current_principal)
) -> ModelList:
    """The tenants this credential may chat with, as models (`id` = tenant id)."""
    services = _services(request)
    allowed = [t.id for t in services.tenants.all() if _may_chat(principal, t.id)]
    return ModelList(data=[_model_info(services, tenant_id) for tenant_id in allowed])


@router.get("/models/{model}", response_model=ModelInfo, responses=_ERRORS)
async def retrieve_model(
    model: str, request: Request, principal: Principal = Depends(current_principal)
) -> ModelInfo:
    """One tenant this credential may chat with (404 unknown, 403 not allowed)."""
    services = _services(request)
    services.tenants.get(model)
    authorize(principal, model, "chat")
    return _model_info(services, model)


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses={
        **_ERRORS,
        200: {
            "description": "A completion; with `stream: true`, server-sent events of "
            "`ChatCompletionChunk` ending with `data: [DONE]`.",
            "content": {"text/event-stream": {}},
        },
    },
)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    principal: Principal = Depends(current_principal),
) -> Response:
    """A chat completion from the tenant named by `model`, with RAG over its documents."""
    services = _services(request)
    history = [{"role": m.role, "content": m.text()} for m in body.messages[:-1]]
    chat_request = ChatRequest(
        tenant_id=body.model,
        question=body.messages[-1].text(),
        history=history,
        max_tokens=body.max_tokens or body.max_completion_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stop_tuple(),
        seed=body.seed,
        channel="api",
        client_ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
    )
    turn = await start_chat_turn(services, principal, chat_request)
    headers = {"x-request-id": turn.request_id}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return ClosingStreamingResponse(
            _sse_events(turn, body.model, include_usage),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache"},
        )
    finished, last = await _collect_unless_disconnected(request, turn)
    if not finished:
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it
    completion = _completion(turn, body.model, last)
    return JSONResponse(completion.model_dump(mode="json"), headers=headers)


def _extension(turn: ChatTurn) -> TenantLLMExtension:
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


def _completion(turn: ChatTurn, model: str, last: GenerationChunk | None) -> ChatCompletion:
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
            "tenantllm": _extension(turn),
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


async def _collect_unless_disconnected(
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
        return False, None
    return True, generation.result()


def _sse(chunk: ChatCompletionChunk) -> str:
    return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"


async def _sse_events(turn: ChatTurn, model: str, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events: role + sources, text deltas, finish + sources, [usage], [DONE]."""
    base: dict[str, Any] = {
        "id": f"chatcmpl-{turn.request_id}",
        "created": int(time.time()),
        "model": model,
    }
    extension = _extension(turn)
    yield _sse(
        ChatCompletionChunk.model_validate(
            {
                **base,
                "choices": [{"delta": {"role": "assistant", "content": ""}}],
                "tenantllm": extension,
            }
        )
    )
    last: GenerationChunk | None = None
    try:
        async with aclosing(turn.stream()) as stream:
            async for chunk in stream:
                last = chunk
                if chunk.delta:
                    yield _sse(
                        ChatCompletionChunk.model_validate(
                            {**base, "choices": [{"delta": {"content": chunk.delta}}]}
                        )
                    )
    except TenantLLMError as exc:
        # The status line is already sent: report the error the way OpenAI streams do.
        yield f"data: {json.dumps(error_body(exc))}\n\n"
        return
    except Exception:
        log.exception("stream of %s failed", turn.request_id)
        yield f"data: {json.dumps(_INTERNAL_ERROR)}\n\n"
        return
    yield _sse(
        ChatCompletionChunk.model_validate(
            {
                **base,
                "choices": [{"delta": {}, "finish_reason": _finish_reason(last)}],
                "tenantllm": extension,
            }
        )
    )
    if include_usage:
        yield _sse(
            ChatCompletionChunk.model_validate({**base, "choices": [], "usage": _usage(turn, last)})
        )
    yield "data: [DONE]\n\n"


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
