"""The OpenAI-compatible REST API: `GET /v1/models`, `POST /v1/chat/completions`.

A model is a tenant (`model` = tenant id). The credential is `Authorization: Bearer` with an
API key (`tlm_...`) or an OIDC access token; the principal it names decides which tenants may
be used, never a field of the request. Every completion is the same chat turn as the UI's
(`core.chat.turn`), audited with action `api_chat`. Retrieval sources travel in the extension field
`tenantllm` (see core/api/schemas.py). Errors use the OpenAI shape (core/api/errors.py).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from core.api.errors import OpenAIRoute, audit_refusal
from core.api.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    ErrorResponse,
    ModelInfo,
    ModelList,
)
from core.api.stream import (
    ClosingStreamingResponse,
    collect_unless_disconnected,
    completion,
    first_chunk,
    sse_events,
)
from core.audit.auditor import caller_of
from core.auth.bearer import AuthRuntime, principal_from_bearer, record_refusal
from core.chat.request import ChatRequest
from core.chat.turn import ChatTurn, start_chat_turn
from core.errors import NotAuthenticated, PermissionDenied, TenantLLMError
from core.identity import Principal
from core.rbac import authorize, is_allowed
from core.services import Services

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (400, "Invalid or unsupported parameter"),
        (401, "Missing, invalid, expired or revoked credential"),
        (403, "This credential may not use this tenant"),
        (404, "Unknown model (tenant)"),
        (429, "Rate limited, or a token budget is spent (code `budget_exceeded`)"),
        (503, "The engine is starting or overloaded"),
    )
}

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible API"], route_class=OpenAIRoute)
_bearer = HTTPBearer(
    auto_error=False, description="An API key (`tlm_...`) or an OIDC access token."
)


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _auth(request: Request) -> AuthRuntime:
    auth: AuthRuntime = request.app.state.auth  # this app's, set by core.server.create_app
    return auth


def _api_action(request: Request) -> str:
    return "api_chat" if request.url.path.endswith("/chat/completions") else "api_models"


async def current_principal(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> Principal:
    """The principal named by the bearer credential (401 without a valid one)."""
    if credentials is None or not credentials.credentials:
        err = NotAuthenticated(
            "Missing credential: send 'Authorization: Bearer <API key or access token>'."
        )
        # Through the refusal log: a flood of credential-less calls costs a few rows too.
        record_refusal(_auth(request), err, *caller_of(request), action=_api_action(request))
        raise err
    # Key lookups hit the database and JWT checks may fetch the IdP's keys: not on the loop.
    principal = await run_in_threadpool(
        principal_from_bearer, _auth(request), credentials.credentials, *caller_of(request)
    )
    request.state.principal = principal  # for auditing refusals that happen after this
    return principal


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
    allowed = [t.id for t in services.tenants.all() if is_allowed(principal, t.id, "chat")]
    return ModelList(data=[_model_info(services, tenant_id) for tenant_id in allowed])


@router.get("/models/{model}", response_model=ModelInfo, responses=_ERRORS)
async def retrieve_model(
    model: str, request: Request, principal: Principal = Depends(current_principal)
) -> ModelInfo:
    """One tenant this credential may chat with (404 unknown, 403 not allowed)."""
    services = _services(request)
    try:
        services.tenants.get(model)
        authorize(principal, model, "chat")
    except TenantLLMError as err:  # unknown model or not allowed: audited like any refusal
        audit_refusal(request, err, model if isinstance(err, PermissionDenied) else None)
        raise
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
    client_ip, user_agent = caller_of(request)
    chat_request = ChatRequest(
        tenant_id=body.model,
        question=body.messages[-1].text(),
        history=history,
        max_tokens=body.max_tokens or body.max_completion_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stop_tuple(),
        seed=body.seed,
        sampling=body.sampling_options(),
        channel="api",
        client_ip=client_ip,
        user_agent=user_agent,
    )
    turn = await start_chat_turn(services, principal, chat_request)
    headers = {"x-request-id": turn.request_id, **_budget_headers(turn)}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        stream = turn.stream()
        # Wait for the first chunk before answering 200: a full generation queue, an engine
        # that died or a request the engine refuses still gets its proper HTTP status.
        first = await first_chunk(stream)
        return ClosingStreamingResponse(
            sse_events(turn, stream, first, body.model, include_usage),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache"},
        )
    finished, answers = await collect_unless_disconnected(request, turn)
    if not finished or answers is None:
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it
    answer = completion(turn, body.model, answers, with_logprobs=bool(body.logprobs))
    # Settled by now: what is left after what this answer really used.
    headers.update(_budget_headers(turn))
    return JSONResponse(answer.model_dump(mode="json"), headers=headers)


def _budget_headers(turn: ChatTurn) -> dict[str, str]:
    """What is left of the budgets that apply to the caller (none: no header).

    `x-tenantllm-budget-remaining-tokens` is the tightest of them; the `-team-` and `-user-`
    ones name each side. On a stream they are sent before the answer, so they count the
    answer's whole reservation (prompt + n x max_tokens) as spent.
    """
    allowance = turn.allowance
    if allowance is None or not allowance.limits:
        return {}
    headers = {"x-tenantllm-budget-remaining-tokens": str(allowance.remaining())}
    team, member = allowance.remaining("team"), allowance.remaining("member")
    if team is not None:
        headers["x-tenantllm-budget-remaining-team-tokens"] = str(team)
    if member is not None:
        headers["x-tenantllm-budget-remaining-user-tokens"] = str(member)
    return headers
