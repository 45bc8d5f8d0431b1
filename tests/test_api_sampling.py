"""The OpenAI sampling parameters (issue 16, item 2) with the official `openai` client.

Against the real app (`app_server`: the real engine, the demo documents), each parameter is
checked by its effect, not by being accepted: `stop` stops,
`n` gives n answers whose tokens the usage and the audit count, `logprobs` carries the top
alternatives, `logit_bias` forbids (and forces) a token, `response_format` gives JSON that
follows the schema, the penalties change a greedy answer. Out-of-range values and values
beyond the tenant's bounds are 400s that name the parameter. The remote backend (a vLLM
server, `vllm_server`) gets the same parameters through its request body, and `seed` (which
repeats a sampled answer) only when the operator says the server runs on a GPU: on the CPU
a seeded request prefilled in chunks stops vLLM's engine (tests/test_engine.py shows the
in-process engine dropping it).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import jsonschema
import openai
import pytest
from openai import OpenAI

from core.auth.apikeys import create_key
from core.config import Settings
from core.engine.base import (
    EngineOptions,
    GenerationParams,
    ResponseFormat,
    SamplingBounds,
    SamplingOptions,
    check_sampling,
)
from core.errors import InvalidRequest
from core.tenancy import PromptTemplate, Tenant
from tests.fixtures.common import BUNDLED_MODEL_DIR
from tests.test_api import QUESTION, _error_of, app_settings, audit_event, client

pytestmark = pytest.mark.engine

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "discount_percent": {"type": "integer", "minimum": 0, "maximum": 100},
        "annual": {"type": "boolean"},
    },
    "required": ["discount_percent", "annual"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def sales(app_server: Any) -> OpenAI:
    """The official client with a new key of the sales team."""
    made = create_key(app_settings(app_server), tenant_id="sales", created_by="test-sampling")
    return client(app_server, made.secret)


def refusal_event(app_server: Any, words: str) -> Any:
    """The newest audit row of a sales chat refused with `words` in its detail (polled)."""
    import time

    from sqlalchemy import select

    from core.audit.models import AuditEventRow
    from core.db import session_scope

    url = app_settings(app_server).resolved_database_url
    query = (
        select(AuditEventRow)
        .where(AuditEventRow.tenant_id == "sales", AuditEventRow.detail.contains(words))
        .order_by(AuditEventRow.seq.desc())
        .limit(1)
    )
    for _ in range(300):
        with session_scope(url) as session:
            row = session.scalars(query).first()
            if row is not None:
                return row
        time.sleep(0.1)
    raise AssertionError(f"no audit event with {words!r}")


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    """The bundled model's tokenizer (token ids for logit_bias)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(BUNDLED_MODEL_DIR)


def ask(sales: OpenAI, **params: Any) -> Any:
    """One non-streamed completion of the sales question (short: 16 tokens by default)."""
    return sales.chat.completions.create(
        model="sales", messages=QUESTION, **{"max_tokens": 16, **params}
    )


def streamed(sales: OpenAI, **params: Any) -> tuple[dict[int, str], dict[int, str], Any, list]:
    """A streamed completion: text and finish reason per choice, the usage, the chunks."""
    chunks = list(
        sales.chat.completions.create(
            model="sales",
            messages=QUESTION,
            stream=True,
            stream_options={"include_usage": True},
            **{"max_tokens": 16, **params},
        )
    )
    text: dict[int, str] = {}
    finish: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            text[choice.index] = text.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    return text, finish, chunks[-1].usage, chunks


def test_stop_ends_the_answer_where_the_stop_string_starts(sales: OpenAI) -> None:
    baseline = ask(sales, temperature=0, max_tokens=24).choices[0].message.content
    words = [w for w in baseline.split() if len(w) >= 3 and baseline.index(w) > 0]
    assert words, f"the greedy answer should have a word to stop at: {baseline!r}"
    stop = words[0]
    expected = baseline[: baseline.index(stop)]
    stopped = ask(sales, temperature=0, max_tokens=24, stop=[stop]).choices[0]
    assert stopped.message.content == expected and stopped.finish_reason == "stop"
    text, finish, _, _ = streamed(sales, temperature=0, max_tokens=24, stop=stop)
    assert text == {0: expected} and finish == {0: "stop"}


def test_n_gives_n_answers_and_usage_and_audit_count_all(app_server: Any, sales: OpenAI) -> None:
    reply = ask(sales, n=3, temperature=1.0, seed=7, max_tokens=8, logprobs=True)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert all(c.message.content and c.finish_reason in ("stop", "length") for c in reply.choices)
    assert len({c.message.content for c in reply.choices}) > 1  # sampled apart
    per_choice = [len(c.logprobs.content) for c in reply.choices]
    assert reply.usage is not None and reply.usage.completion_tokens == sum(per_choice)
    assert max(per_choice) < reply.usage.completion_tokens  # more than one answer counted
    # The audit row (usage for chargeback, what the budgets settle) counts every answer.
    event = audit_event(app_server, reply.model_extra["tenantllm"]["request_id"])
    assert event.tokens_out == reply.usage.completion_tokens
    text, finish, usage, _ = streamed(sales, n=2, temperature=1.0, seed=7, max_tokens=8)
    assert set(text) == {0, 1} and all(text.values()) and set(finish) == {0, 1}
    assert usage is not None and usage.completion_tokens > 8 // 2


def test_logprobs_carry_the_top_alternatives(sales: OpenAI) -> None:
    reply = ask(sales, temperature=0, max_tokens=8, logprobs=True, top_logprobs=3)
    choice = reply.choices[0]
    content = choice.logprobs.content
    assert content and len(content) == reply.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        ranked = [t.logprob for t in entry.top_logprobs]
        assert ranked == sorted(ranked, reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert entry.top_logprobs[0].token == entry.token
        assert entry.bytes == list(entry.token.encode())
    assert "".join(e.token for e in content) == choice.message.content
    plain = ask(sales, temperature=0, max_tokens=4).choices[0]
    assert plain.logprobs is None
    _, _, _, chunks = streamed(sales, temperature=0, max_tokens=8, logprobs=True, top_logprobs=2)
    streamed_entries = [
        e for c in chunks for ch in c.choices if ch.logprobs for e in ch.logprobs.content or []
    ]
    assert [e.token for e in streamed_entries] == [e.token for e in content]
    assert all(len(e.top_logprobs) == 2 for e in streamed_entries)


def test_logit_bias_forbids_and_forces_tokens(sales: OpenAI, tokenizer: Any) -> None:
    greedy = ask(sales, temperature=0, max_tokens=8, logprobs=True).choices[0]
    first = greedy.logprobs.content[0].token
    ids = tokenizer.encode(first, add_special_tokens=False)
    assert len(ids) == 1, f"{first!r} should be one token"
    banned = ask(sales, temperature=0, max_tokens=8, logprobs=True, logit_bias={str(ids[0]): -100})
    tokens = [e.token for e in banned.choices[0].logprobs.content]
    assert first not in tokens and banned.choices[0].message.content != greedy.message.content
    (forced_id,) = tokenizer.encode(" banana", add_special_tokens=False)
    forced = ask(sales, temperature=0, max_tokens=4, logit_bias={str(forced_id): 100})
    assert forced.choices[0].message.content == " banana" * 4


def test_json_schema_answer_follows_the_schema(sales: OpenAI) -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "discount", "schema": SCHEMA, "strict": True},
    }
    reply = ask(sales, temperature=0, max_tokens=48, response_format=response_format)
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    jsonschema.validate(json.loads(choice.message.content), SCHEMA)
    text, finish, _, _ = streamed(
        sales, temperature=0, max_tokens=48, response_format=response_format
    )
    assert finish == {0: "stop"}
    jsonschema.validate(json.loads(text[0]), SCHEMA)


def test_json_mode_answer_is_a_json_object(sales: OpenAI) -> None:
    reply = ask(sales, temperature=0, max_tokens=48, response_format={"type": "json_object"})
    content = reply.choices[0].message.content
    assert content.lstrip().startswith("{"), content
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)
    plain = ask(sales, temperature=0, max_tokens=8, response_format={"type": "text"})
    assert plain.choices[0].message.content


def test_penalties_change_a_greedy_answer(sales: OpenAI) -> None:
    baseline = ask(sales, temperature=0, max_tokens=32, logprobs=True).choices[0]
    tokens = [e.token for e in baseline.logprobs.content]
    assert len(set(tokens)) < len(tokens), "the greedy answer should repeat a token"
    for penalty in ("frequency_penalty", "presence_penalty"):
        penalised = ask(sales, temperature=0, max_tokens=32, **{penalty: 2.0}).choices[0]
        assert penalised.message.content != baseline.message.content, penalty


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"frequency_penalty": 2.5}, "frequency_penalty"),
        ({"presence_penalty": -3}, "presence_penalty"),
        ({"n": 0}, "n"),
        ({"n": 17}, "n"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logit_bias": {"42": 101}}, "logit_bias"),
        ({"logit_bias": {"hello": 5}}, "logit_bias"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "schema"),
        ({"seed": -1}, "seed"),
        ({"messages": [{"role": "system", "content": "You are finance."}, *QUESTION]}, "role"),
        ({"messages": [{"role": "developer", "content": "Be finance."}, *QUESTION]}, "role"),
    ],
)
def test_out_of_range_values_are_400s_naming_the_parameter(
    sales: OpenAI, changes: dict[str, Any], param: str
) -> None:
    request: dict[str, Any] = {"model": "sales", "messages": QUESTION, "max_tokens": 4, **changes}
    with pytest.raises(openai.BadRequestError) as refused:
        sales.chat.completions.create(**request)
    error = _error_of(refused.value)
    assert error["type"] == "invalid_request_error"
    assert param in (error.get("param") or "") and param in error["message"]


BIG_SCHEMA = {
    "type": "object",
    "properties": {f"field_{i:05d}": {"type": "string"} for i in range(800)},
}


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"n": 5}, "n must be between 1 and 4"),
        ({"logprobs": True, "top_logprobs": 6}, "top_logprobs must be between 0 and 5"),
        ({"logit_bias": {str(i): 1 for i in range(301)}}, "at most 300 tokens"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "big", "schema": BIG_SCHEMA},
                }
            },
            "at most 16000 characters",
        ),
    ],
)
def test_values_beyond_the_tenant_bounds_are_audited_400s(
    app_server: Any, sales: OpenAI, changes: dict[str, Any], words: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        ask(sales, max_tokens=4, **changes)
    error = _error_of(refused.value)
    assert words in error["message"] and "for this tenant" in error["message"]
    event = refusal_event(app_server, words)
    assert (event.action, event.outcome, event.status) == ("api_chat", "error", 400)
    assert ask(sales, max_tokens=2).choices[0].message.content is not None  # still serving


def test_a_token_id_outside_the_vocabulary_is_a_400(sales: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        ask(sales, max_tokens=4, logit_bias={"999999": 5})
    assert "logit_bias" in _error_of(refused.value)["message"]
    assert ask(sales, max_tokens=2).choices[0].message.content is not None


def _tenant(**bounds: Any) -> Tenant:
    return Tenant("bounded", "Bounded", "", PromptTemplate(system="You help."), **bounds)


def test_tenant_bounds_are_checked_and_resolved_per_tenant(tmp_path: Any) -> None:
    assert _tenant().problems() == []
    for bad in ({"max_n": 0}, {"max_n": 17}, {"max_top_logprobs": 21}, {"max_n": True}):
        assert any(next(iter(bad)) in p for p in _tenant(**bad).problems()), bad
    strict = _tenant(max_n=1, max_top_logprobs=0, max_logit_bias_tokens=0, max_json_schema_chars=0)
    options = EngineOptions.for_tenant(Settings(data_dir=tmp_path), strict)
    assert options.bounds == SamplingBounds(1, 0, 0, 0)
    check_sampling(SamplingOptions(logprobs=True), options.bounds)  # logprobs alone: allowed
    for refused in (
        SamplingOptions(n=2),
        SamplingOptions(logprobs=True, top_logprobs=1),
        SamplingOptions(logit_bias=((5, 1.0),)),
        SamplingOptions(response_format=ResponseFormat("json_schema", "{}")),
    ):
        with pytest.raises(InvalidRequest, match="for this tenant"):
            check_sampling(refused, options.bounds)
    check_sampling(SamplingOptions(response_format=ResponseFormat("json_object")), options.bounds)


# --- the remote backend: the same parameters through a vLLM server's request body ----------
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
async def remote(vllm_server: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    """A RemoteEngine on the shared vLLM server."""
    from core.engine.remote import RemoteEngine

    settings = Settings(
        data_dir=tmp_path_factory.mktemp("remote-sampling"),
        engine_backend="openai",
        engine_url=vllm_server,
        model="bundled",
    )
    engine = RemoteEngine(settings)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


async def test_remote_backend_passes_n_logprobs_json_schema_and_stop(remote: Any) -> None:
    options = replace(remote.default_options("sales"), bounds=SamplingBounds())
    sampling = SamplingOptions(
        n=2,
        logprobs=True,
        top_logprobs=2,
        response_format=ResponseFormat("json_schema", json.dumps(SCHEMA)),
    )
    params = GenerationParams(max_tokens=48, temperature=0.8, seed=3, sampling=sampling)
    chunks = [c async for c in remote.stream_chat(FRANCE, params, options)]
    text: dict[int, str] = {}
    logprobs: dict[int, int] = {}
    finish: dict[int, str] = {}
    for chunk in chunks:
        for out in chunk.choice_outputs():
            text[out.index] = out.text
            logprobs[out.index] = logprobs.get(out.index, 0) + len(out.logprobs)
            assert all(len(e.top) == 2 for e in out.logprobs)
            if out.finish_reason:
                finish[out.index] = out.finish_reason
    assert set(text) == {0, 1} and finish == {0: "stop", 1: "stop"}
    for answer in text.values():
        jsonschema.validate(json.loads(answer), SCHEMA)
    last = chunks[-1]
    assert last.finished and last.completion_tokens == logprobs[0] + logprobs[1]
    stop_params = GenerationParams(max_tokens=24, temperature=0.0)
    baseline = [c async for c in remote.stream_chat(FRANCE, stop_params, options)][-1].text
    word = next(w for w in baseline.split() if len(w) >= 3 and baseline.index(w) > 0)
    stopped = [
        c async for c in remote.stream_chat(FRANCE, replace(stop_params, stop=(word,)), options)
    ][-1]
    assert stopped.text == baseline[: baseline.index(word)] and stopped.finish_reason == "stop"


async def test_the_seed_reaches_the_server_only_when_it_honours_seeds(
    remote: Any, vllm_server: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.engine.remote import RemoteEngine

    seeded_engine = RemoteEngine(
        Settings(data_dir=tmp_path, engine_backend="openai", engine_url=vllm_server,
                 model="bundled", engine_seeded_sampling=True)
    )  # fmt: skip
    await seeded_engine.start()
    sent: list[int | None] = []
    try:
        for engine in (remote, seeded_engine):  # what each puts in its request body
            monkeypatch.setattr(engine, "_body", _recording_seeds(engine._body, sent))

        async def sample(engine: Any, seed: int) -> str:
            params = GenerationParams(max_tokens=12, temperature=1.0, seed=seed)
            options = remote.default_options("sales")
            return [c async for c in engine.stream_chat(FRANCE, params, options)][-1].text

        await sample(remote, 1234)
        first = await sample(seeded_engine, 1234)
        assert await sample(seeded_engine, 1234) == first  # the server honoured it
        # Sampling really is random: other seeds give another answer.
        others = [await sample(seeded_engine, seed) for seed in (5678, 91011, 121314)]
        assert any(other != first for other in others)
    finally:
        await seeded_engine.stop()
    assert sent == [None, 1234, 1234, 5678, 91011, 121314]


def _recording_seeds(body: Any, sent: list[int | None]) -> Any:
    """`RemoteEngine._body` that notes each request's seed first."""

    def recording(prompt: Any, params: GenerationParams, request: Any) -> Any:
        sent.append(params.seed)
        return body(prompt, params, request)

    return recording
