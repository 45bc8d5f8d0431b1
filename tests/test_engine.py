"""The shared in-process vLLM engine, for real (one engine per pytest run)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import fields, replace
from typing import Any

import pytest

from core.engine.base import Engine, EngineOptions, GenerationChunk, GenerationParams, cache_salt
from core.errors import EngineOverloaded, EngineUnavailable, InvalidRequest, PromptTooLong

pytestmark = pytest.mark.engine

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = GenerationParams(max_tokens=32, temperature=0.0)


def _options(engine: Engine, **changes: Any) -> EngineOptions:
    """The engine's default options for tenant `sales`, with `changes`."""
    return replace(engine.default_options("sales"), **changes)


async def _collect(chunks: AsyncIterator[GenerationChunk]) -> list[GenerationChunk]:
    return [chunk async for chunk in chunks]


async def _until(predicate: Any, deadline_s: float = 60.0) -> bool:
    """Poll `predicate` (async) until true or the generous deadline passes (no timing claims)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while loop.time() < end:
        if await predicate():
            return True
        await asyncio.sleep(0.1)
    return await predicate()


class GenerateSpy:
    """Wraps AsyncLLM.generate to see exactly what the engine is handed."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls: list[tuple[Any, dict[str, Any]]] = []

    def __call__(self, prompt: Any, sampling: Any, request_id: str, **kwargs: Any) -> Any:
        self.calls.append((prompt, {"sampling": sampling, "request_id": request_id, **kwargs}))
        return self.real(prompt, sampling, request_id, **kwargs)


@pytest.fixture
def spy(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> GenerateSpy:
    llm = engine.async_llm  # type: ignore[attr-defined]
    wrapper = GenerateSpy(llm.generate)
    monkeypatch.setattr(llm, "generate", wrapper)
    return wrapper


async def test_greedy_answer_knows_paris(engine: Engine) -> None:
    chunks = await _collect(engine.stream_chat(FRANCE, GREEDY, _options(engine)))
    final = chunks[-1]
    assert final.finished and final.finish_reason in ("stop", "length")
    assert "Paris" in final.text, final.text  # guards the model conversion (rope_theta)
    assert final.prompt_tokens == engine.count_prompt_tokens(FRANCE)
    assert final.completion_tokens > 0
    assert "".join(c.delta for c in chunks) == final.text  # deltas add up to the text


async def test_eight_concurrent_streams_complete_in_several_chunks(engine: Engine) -> None:
    questions = [f"Count from 1 to {n + 5}, one number per line." for n in range(8)]
    params = GenerationParams(max_tokens=24, temperature=0.0)
    streams = [
        _collect(
            engine.stream_chat(
                [{"role": "user", "content": q}], params, _options(engine, tenant_id=f"t{i}")
            )
        )
        for i, q in enumerate(questions)
    ]
    results = await asyncio.gather(*streams)
    for chunks in results:
        assert chunks[-1].finished
        assert len([c for c in chunks if c.delta]) >= 3
        assert all(b.text.startswith(a.text) for a, b in zip(chunks, chunks[1:], strict=False))


async def test_closing_a_stream_aborts_it_in_the_engine(engine: Engine) -> None:
    params = GenerationParams(max_tokens=400, temperature=0.9, ignore_eos=True)
    story = [{"role": "user", "content": "Tell me a very long story about a lighthouse."}]
    stream = engine.stream_chat(story, params, _options(engine))
    async with aclosing(stream):
        async for chunk in stream:
            if chunk.completion_tokens >= 3:
                break
        status = await engine.status()
        assert status.running + status.waiting >= 1  # it really was in the engine

    async def idle() -> bool:
        status = await engine.status()
        return status.running == 0 and status.waiting == 0

    assert await _until(idle)


async def test_cancelling_the_consumer_task_aborts_too(engine: Engine) -> None:
    params = GenerationParams(max_tokens=400, temperature=0.9, ignore_eos=True)
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.stream_chat(FRANCE, params, _options(engine)):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 120)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async def idle() -> bool:
        return (await engine.status()).running == 0

    assert await _until(idle)


async def test_caps_are_refused_before_the_engine(engine: Engine, spy: GenerateSpy) -> None:
    settings = engine.settings
    too_long = [{"role": "user", "content": "lighthouse " * (settings.max_prompt_tokens + 10)}]
    with pytest.raises(PromptTooLong):
        engine.stream_chat(too_long, GREEDY, _options(engine))
    with pytest.raises(PromptTooLong):  # a tenant's lower cap
        engine.stream_chat(FRANCE, GREEDY, _options(engine, max_prompt_tokens=5))
    too_many = GenerationParams(max_tokens=settings.max_output_tokens + 1)
    with pytest.raises(InvalidRequest, match="max_tokens"):
        engine.stream_chat(FRANCE, too_many, _options(engine))
    with pytest.raises(InvalidRequest, match="max_tokens"):
        engine.stream_chat(FRANCE, GREEDY, _options(engine, max_output_tokens=8))
    for bad in (
        GenerationParams(max_tokens=0),
        GenerationParams(max_tokens=8, temperature=-1),
        GenerationParams(max_tokens=8, top_p=0),
    ):
        with pytest.raises(InvalidRequest):
            engine.stream_chat(FRANCE, bad, _options(engine))
    with pytest.raises(InvalidRequest):
        engine.stream_chat([{"role": "tool", "content": "x"}], GREEDY, _options(engine))
    with pytest.raises(InvalidRequest):
        _options(engine, tenant_id="")
    assert spy.calls == []


async def test_cache_salt_is_per_tenant_and_server_side(engine: Engine, spy: GenerateSpy) -> None:
    for tenant in ("sales", "finance", "sales"):
        await _collect(engine.stream_chat(FRANCE, GREEDY, _options(engine, tenant_id=tenant)))
    salts = [prompt["cache_salt"] for prompt, _ in spy.calls]
    assert salts[0] == salts[2] != salts[1]
    assert salts[0] == cache_salt(engine.settings.secret_key, "sales")
    assert "sales" not in salts[0] and len(salts[0]) >= 32
    assert cache_salt("another-secret", "sales") != salts[0]
    # No way for a caller to choose the salt.
    parameters = inspect.signature(engine.stream_chat).parameters
    assert not [name for name in parameters if "salt" in name]
    with pytest.raises(TypeError):
        engine.stream_chat(FRANCE, GREEDY, _options(engine), cache_salt="x")  # type: ignore[call-arg]
    assert not [f for f in fields(EngineOptions) if "salt" in f.name]


async def test_cache_salt_is_per_user_by_default(engine: Engine, spy: GenerateSpy) -> None:
    assert engine.settings.prefix_cache_scope == "user"
    for user in ("alice", "bob", "alice"):
        await _collect(engine.stream_chat(FRANCE, GREEDY, _options(engine, user_id=user)))
    salts = [prompt["cache_salt"] for prompt, _ in spy.calls]
    assert salts[0] == salts[2] != salts[1]
    assert salts[0] == cache_salt(engine.settings.secret_key, "sales", "alice")
    assert salts[0] != cache_salt(engine.settings.secret_key, "sales")


async def test_request_ids_priority_and_no_lora_passed_through(
    engine: Engine, spy: GenerateSpy
) -> None:
    await _collect(engine.stream_chat(FRANCE, GREEDY, _options(engine, priority=5)))
    await _collect(engine.stream_chat(FRANCE, GREEDY, _options(engine, request_id="fixed-id")))
    first, second = (kwargs for _, kwargs in spy.calls)
    assert first["priority"] == 5 and second["priority"] == 0
    assert second["request_id"] == "fixed-id" and first["request_id"] != "fixed-id"
    assert first["lora_request"] is None  # not asked for


async def test_seeded_long_prompts_at_once_leave_the_cpu_engine_serving(
    engine: Engine, spy: GenerateSpy
) -> None:
    # Three ~1,200-token prompts at once are more than one step's token budget (2,048): vLLM
    # prefills some in chunks, and on the CPU rewinding a seeded request's generator after a chunk
    # stops the engine core ("CPU Generator does not use offset"). The seed is dropped here.
    assert not engine.honours_seed  # this run's engine is on the CPU
    filler = " ".join(["The quarterly report lists revenue, churn and margin."] * 120)
    prompts = [[{"role": "user", "content": f"{n}. {filler} Summarise."}] for n in range(3)]
    assert all(engine.count_prompt_tokens(p) > 1_000 for p in prompts)
    seeded = GenerationParams(max_tokens=8, temperature=1.0, seed=1234)
    options = _options(engine, max_prompt_tokens=2_000)
    answers = await asyncio.gather(
        *(_collect(engine.stream_chat(p, seeded, options)) for p in prompts)
    )
    assert all(chunks and chunks[-1].finished for chunks in answers)
    assert [kwargs["sampling"].seed for _, kwargs in spy.calls] == [None] * 3
    assert engine.ready
    assert (
        "Paris" in (await _collect(engine.stream_chat(FRANCE, GREEDY, _options(engine))))[-1].text
    )


async def test_lora_is_ignored_when_the_engine_has_no_lora(
    engine: Engine, spy: GenerateSpy
) -> None:
    assert not engine.settings.enable_lora
    await _collect(engine.stream_chat(FRANCE, GREEDY, _options(engine, lora_path="/x/lora")))
    assert spy.calls[0][1]["lora_request"] is None


async def test_engine_failures_become_typed_errors(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vllm.exceptions import QueueOverflowError, VLLMValidationError
    from vllm.v1.engine.exceptions import EngineDeadError

    cases = [
        (EngineDeadError(), EngineUnavailable),
        (QueueOverflowError(), EngineOverloaded),
        (VLLMValidationError("bad seed", parameter="seed"), InvalidRequest),
        (RuntimeError("boom in a kernel"), EngineUnavailable),
    ]
    for error, expected in cases:

        async def failing(*args: Any, error: Exception = error, **kwargs: Any) -> Any:
            raise error
            yield  # an async generator, like the real one

        monkeypatch.setattr(engine.async_llm, "generate", failing)  # type: ignore[attr-defined]
        with pytest.raises(expected) as caught:
            await _collect(engine.stream_chat(FRANCE, GREEDY, _options(engine)))
        assert "Traceback" not in caught.value.message
        assert "boom" not in caught.value.message  # internal details stay in the log
    assert (await engine.status()).waiting == 0


async def test_status_reports_the_ready_engine(engine: Engine) -> None:
    status = await engine.status()
    assert status.backend == "vllm" and status.ready
    assert status.running == 0 and status.waiting == 0


def test_options_resolve_the_tenants_caps_once(tmp_settings: Any) -> None:
    from core.tenancy import PromptTemplate, Tenant

    tenant = Tenant(
        id="sales",
        display_name="Sales",
        description="",
        prompt=PromptTemplate(system="You help."),
        priority=3,
        max_prompt_tokens=100_000,  # above the context window: the window wins
        max_output_tokens=64,
        lora_path="/x/lora",
    )
    options = EngineOptions.for_tenant(tmp_settings, tenant, user_id="u", request_id="r")
    window = tmp_settings.max_model_len - 1
    assert options == EngineOptions("sales", window, 64, "u", "r", 3, "/x/lora")
    plain = replace(tenant, max_prompt_tokens=None, max_output_tokens=None)
    options = EngineOptions.for_tenant(tmp_settings, plain)
    assert options.max_prompt_tokens == tmp_settings.max_prompt_tokens
    assert options.max_output_tokens == tmp_settings.max_output_tokens
    assert options.request_id and options.user_id is None
    for bad in ({"tenant_id": ""}, {"max_output_tokens": 0}, {"max_prompt_tokens": True}):
        with pytest.raises(InvalidRequest):
            replace(options, **bad)
