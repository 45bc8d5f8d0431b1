"""Preparing a chat turn's prompt: untrusted history, the question, parameters, the fit.

Pure functions of their arguments (plus the engine's tokenizer for the fit), so the rules
that keep client data in its place are easy to read and to test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from core.engine.base import GenerationParams
from core.errors import InvalidRequest, PromptTooLong

if TYPE_CHECKING:
    from core.chat.turn import ChatRequest
    from core.services import Services
    from core.tenancy import Source, Tenant

# Client history is untrusted and only context: keep the recent part, and bound each turn.
MAX_HISTORY_MESSAGES = 20
MAX_HISTORY_CHARS = 4000
MAX_QUESTION_CHARS = 16000
HISTORY_ROLES = ("user", "assistant")


def sanitize_history(history: Sequence[object]) -> list[dict[str, str]]:
    """Keep only recent user/assistant text turns, each capped: history is client data.

    System messages, tool turns, unknown roles, non-text content and extra keys are dropped,
    so a client cannot smuggle instructions or another tenant's context in as "history".
    """
    kept: list[dict[str, str]] = []
    for item in history:
        if not isinstance(item, dict):
            continue
        role, content = item.get("role"), item.get("content")
        if role not in HISTORY_ROLES or not isinstance(content, str) or not content.strip():
            continue
        kept.append({"role": role, "content": content[:MAX_HISTORY_CHARS]})
    return kept[-MAX_HISTORY_MESSAGES:]


def clean_question(question: str) -> str:
    question = question.strip() if isinstance(question, str) else ""
    if not question:
        raise InvalidRequest("The question is empty.")
    if len(question) > MAX_QUESTION_CHARS:
        raise PromptTooLong(f"The question is longer than {MAX_QUESTION_CHARS} characters.")
    return question


def generation_params(services: Services, tenant: Tenant, request: ChatRequest) -> GenerationParams:
    settings = services.settings
    cap = tenant.max_output_tokens or settings.max_output_tokens
    max_tokens = request.max_tokens
    if max_tokens is None:
        max_tokens = min(settings.default_max_tokens, cap)
    if not 1 <= max_tokens <= cap:
        raise InvalidRequest(f"max_tokens must be between 1 and {cap} for this tenant.")
    temperature = 0.7 if request.temperature is None else request.temperature
    if not 0.0 <= temperature <= 2.0:
        raise InvalidRequest("temperature must be between 0 and 2.")
    top_p = 1.0 if request.top_p is None else request.top_p
    if not 0.0 < top_p <= 1.0:
        raise InvalidRequest("top_p must be greater than 0 and at most 1.")
    if len(request.stop) > 4 or any(not s for s in request.stop):
        raise InvalidRequest("stop takes at most 4 non-empty strings.")
    return GenerationParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop=tuple(request.stop),
        seed=request.seed,
    )


def fit_prompt(
    services: Services,
    tenant: Tenant,
    question: str,
    sources: Sequence[Source],
    history: Sequence[dict[str, str]],
) -> tuple[list[dict[str, str]], list[Source], int]:
    """Render the tenant's template, dropping the oldest history then the last (least
    relevant) sources until the prompt fits the tenant's cap.

    The sources returned are exactly those in the prompt, so what the user is shown as
    sources is what the model saw.
    """
    assert services.engine is not None
    settings = services.settings
    # The same cap the engine enforces: the tenant's override, within the context window.
    cap = min(tenant.max_prompt_tokens or settings.max_prompt_tokens, settings.max_model_len - 1)
    kept_sources = list(sources)
    kept_history = list(history)
    while True:
        messages = tenant.prompt.render(
            question=question, sources=kept_sources, history=kept_history
        )
        tokens = services.engine.count_prompt_tokens(messages)
        if tokens <= cap:
            return messages, kept_sources, tokens
        if kept_history:
            kept_history = kept_history[1:]
        elif kept_sources:
            kept_sources = kept_sources[:-1]
        else:
            raise PromptTooLong(
                f"The question is too long for this assistant ({tokens} tokens, at most {cap})."
            )
