"""Token budgets on the OpenAI-compatible API: the remaining-tokens headers, the 429 in the
OpenAI error shape, and cross-team checks. The real app (create_app) in process, with the fake
engine, driven by the official `openai` client."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from core.auth.apikeys import create_key
from core.budgets.admin import set_budget
from tests.test_api import QUESTION, _error_of, async_client
from tests.test_chat import audit_events


@pytest.fixture
def app(services_fake: Any) -> Any:
    from core.server import create_app

    return create_app(services_fake.settings, services_fake)


def _key(services: Any, tenant: str) -> tuple[str, str]:
    made = create_key(services.settings, tenant_id=tenant, created_by="test")
    return made.secret, f"key:{made.key.id}"


async def _ask(api: openai.AsyncOpenAI, model: str = "sales", max_tokens: int = 8) -> Any:
    return await api.chat.completions.with_raw_response.create(
        model=model, messages=QUESTION, max_tokens=max_tokens
    )


async def test_headers_then_429_in_openai_shape(app: Any, services_fake: Any) -> None:
    url = services_fake.settings.resolved_database_url
    secret, subject = _key(services_fake, "sales")
    api = async_client(app, secret)
    first = await _ask(api)
    usage = first.parse().usage
    one_turn = usage.prompt_tokens + 8  # what a turn like this reserves
    services_fake.auditor.flush()  # the first turn ran before any budget: seeded from the log
    # The key's own cap (its subject is key:<id>): one more turn fits, two do not.
    cap = usage.total_tokens + one_turn + 5
    set_budget(url, "sales", {"daily": 10**6}, user=None, actor="test")
    set_budget(url, "sales", {"daily": cap}, user=subject, actor="test")
    second = await _ask(api)
    spent = usage.total_tokens + second.parse().usage.total_tokens
    headers = second.headers
    assert int(headers["x-tenantllm-budget-remaining-user-tokens"]) == cap - spent
    assert int(headers["x-tenantllm-budget-remaining-team-tokens"]) == 10**6 - spent
    assert int(headers["x-tenantllm-budget-remaining-tokens"]) == cap - spent
    with pytest.raises(openai.RateLimitError) as refused:
        await _ask(api)
    error = _error_of(refused.value)
    assert error["code"] == "budget_exceeded" and error["type"] == "insufficient_quota"
    assert error["message"].startswith(f"This request may use up to {one_turn:,} tokens")
    assert f"you have only {cap - spent:,} of your {cap:,}" in error["message"]
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert int(refused.value.response.headers["retry-after"]) >= 1
    events = [e for e in audit_events(services_fake) if e.action == "api_chat"]
    assert [e.outcome for e in events] == ["ok", "ok", "rate_limited"]
    assert "budget_exceeded" in events[-1].flags and events[-1].user_sub == subject
    assert len(services_fake.engine.calls) == 2  # the refused one never reached the engine


async def test_a_spent_sales_budget_leaves_finance_alone(app: Any, services_fake: Any) -> None:
    url = services_fake.settings.resolved_database_url
    set_budget(url, "sales", {"monthly": 0}, user=None, actor="test")
    sales = async_client(app, _key(services_fake, "sales")[0])
    finance = async_client(app, _key(services_fake, "finance")[0])
    with pytest.raises(openai.RateLimitError) as refused:
        await _ask(sales)
    assert _error_of(refused.value)["message"].startswith("Sales has used its 0 tokens for ")
    answer = await _ask(finance, "finance")
    assert answer.http_response.status_code == 200
    # Finance has no budget: no header, so nothing about sales' budget reaches it.
    assert not [h for h in answer.headers if h.startswith("x-tenantllm-budget")]


async def test_streamed_answer_carries_the_header_counting_its_reservation(
    app: Any, services_fake: Any
) -> None:
    url = services_fake.settings.resolved_database_url
    set_budget(url, "sales", {"daily": 100_000}, user=None, actor="test")
    api = async_client(app, _key(services_fake, "sales")[0])
    raw = await api.chat.completions.with_raw_response.create(
        model="sales", messages=QUESTION, max_tokens=8, stream=True
    )
    left = int(raw.headers["x-tenantllm-budget-remaining-tokens"])
    async for _chunk in raw.parse():
        pass
    (event,) = [e for e in audit_events(services_fake) if e.action == "api_chat"]
    assert left == 100_000 - event.tokens_in - 8  # the whole reservation, before the answer
    allowance = services_fake.budgets.allowance("sales", event.user_sub, team_name="Sales")
    assert allowance.remaining() == 100_000 - event.tokens_in - event.tokens_out
