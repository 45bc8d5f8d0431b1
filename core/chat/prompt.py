"""Preparing a chat turn's prompt: untrusted history, the question, parameters, the fit.

Pure functions of plain arguments (the caps as numbers, the engine's token counter as a
function), so the rules that keep client data in its place are easy to read and to test
without the services or an engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from core.engine.base import GenerationParams, check_params
from core.errors import InvalidRequest, PromptTooLong

if TYPE_CHECKING:
    from core.chat.request import ChatRequest
    from core.tenancy import PromptTemplate, Source

TokenCounter = Callable[[list[dict[str, str]]], int]

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
    """The question without surrounding blanks; InvalidRequest if empty, PromptTooLong if huge."""
    question = question.strip() if isinstance(question, str) else ""
    if not question:
        raise InvalidRequest("The question is empty.")
    if len(question) > MAX_QUESTION_CHARS:
        raise PromptTooLong(f"The question is longer than {MAX_QUESTION_CHARS} characters.")
    return question


DEFAULT_TEMPERATURE = 0.7  # a request's and its team's when neither names one


def generation_params(
    request: ChatRequest,
    *,
    default_max_tokens: int,
    output_cap: int,
    team_temperature: float | None = None,
) -> GenerationParams:
    """The request's sampling parameters with the defaults filled in (the temperature: the
    request's, else its team's, else `DEFAULT_TEMPERATURE`), checked against the tenant's
    `output_cap` (InvalidRequest), so a bad request is refused before retrieval."""
    max_tokens = request.max_tokens
    if max_tokens is None:
        max_tokens = min(default_max_tokens, output_cap)
    if len(request.stop) > 4 or any(not s for s in request.stop):
        raise InvalidRequest("stop takes at most 4 non-empty strings.")
    params = GenerationParams(
        max_tokens=max_tokens,
        temperature=next(
            t for t in (request.temperature, team_temperature, DEFAULT_TEMPERATURE) if t is not None
        ),
        top_p=1.0 if request.top_p is None else request.top_p,
        stop=tuple(request.stop),
        seed=request.seed,
        sampling=request.sampling,
    )
    check_params(params, output_cap)  # the engine's own check, once more before streaming
    return params


def fit_prompt(
    template: PromptTemplate,
    question: str,
    sources: Sequence[Source],
    history: Sequence[dict[str, str]],
    *,
    count_tokens: TokenCounter,
    prompt_cap: int,
) -> tuple[list[dict[str, str]], list[Source], int]:
    """Render `template`, dropping the oldest history then the last (least relevant)
    sources until the prompt's tokens (`count_tokens`, the engine's) fit `prompt_cap`.

    Returns the messages, the sources kept and the prompt's tokens. The sources returned are
    exactly those in the prompt, so what the user is shown as sources is what the model saw.
    """
    kept_sources = list(sources)
    kept_history = list(history)
    while True:
        messages = template.render(question=question, sources=kept_sources, history=kept_history)
        tokens = count_tokens(messages)
        if tokens <= prompt_cap:
            return messages, kept_sources, tokens
        if kept_history:
            kept_history = kept_history[1:]
        elif kept_sources:
            kept_sources = kept_sources[:-1]
        else:
            raise PromptTooLong(
                "The question is too long for this assistant "
                f"({tokens} tokens, at most {prompt_cap})."
            )
