"""Backend `openai` against a real vLLM OpenAI-compatible server on loopback.

The server (`vllm_server`, tests/fixtures/vllm_server.py) is started once per pytest run on
the bundled model. The engine of most tests here has no local tokenizer (its bundled model is
not converted in its data dir), so its prompts are counted by the server's `/tokenize`; one
test covers the local tokenizer (the model folder) and its check against the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

import core.engine.remote as remote_module
from core.config import Settings
from core.engine.base import Engine, EngineOptions, GenerationParams, cache_salt
from core.engine.remote import RemoteEngine
from core.errors import ConfigError, EngineUnavailable, InvalidRequest, PromptTooLong
from tests.fixtures.common import free_port

# Starting the server takes ~40 s on a quiet 2-core machine and many minutes on a busy one.
pytestmark = [pytest.mark.engine, pytest.mark.timeout(1800)]

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def _options(engine: Engine, **changes: Any) -> EngineOptions:
    """The engine's default options for tenant `sales`, with `changes`."""
    return replace(engine.default_options("sales"), **changes)


@pytest.fixture(scope="module")
async def remote(
    vllm_server: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RemoteEngine]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("remote-data"),
        engine_backend="openai",
        engine_url=vllm_server,
        model="bundled",  # the server names it its own way: the one served model is used
    )
    engine = RemoteEngine(settings)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


async def test_remote_streams_the_answer(remote: RemoteEngine, bundled_model_dir: Path) -> None:
    assert remote.ready
    params = GenerationParams(max_tokens=32, temperature=0.0)
    chunks = [c async for c in remote.stream_chat(FRANCE, params, _options(remote, priority=1))]
    final = chunks[-1]
    assert final.finished and final.finish_reason == "stop"
    assert "Paris" in final.text
    assert len([c for c in chunks if c.delta]) >= 3  # streamed, not one blob
    assert "".join(c.delta for c in chunks) == final.text
    assert final.completion_tokens > 0
    # The server's /tokenize applies the same chat template as a local tokenizer.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir)
    local = tokenizer.apply_chat_template(FRANCE, tokenize=False, add_generation_prompt=True)
    count = len(tokenizer.encode(local, add_special_tokens=False))
    assert remote.count_prompt_tokens(FRANCE) == count == final.prompt_tokens


def _counter(url: str, name: str) -> float:
    """A Prometheus counter of the server, summed over its label sets."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))  # fmt: skip


async def test_remote_abort_on_close(remote: RemoteEngine, vllm_server: str) -> None:
    generated_before = _counter(vllm_server, "vllm:generation_tokens_total")
    story = [{"role": "user", "content": "Tell me a very long story about a lighthouse."}]
    # ignore_eos: left alone, this request would certainly generate all 500 tokens.
    params = GenerationParams(max_tokens=500, temperature=0.9, ignore_eos=True)
    stream = remote.stream_chat(story, params, _options(remote))
    async with aclosing(stream):
        async for chunk in stream:
            if chunk.completion_tokens >= 3:
                break
    loop = asyncio.get_running_loop()
    end = loop.time() + 120
    status = await remote.status()
    while loop.time() < end and status.running + status.waiting > 0:
        await asyncio.sleep(0.5)
        status = await remote.status()
    assert status.running == 0 and status.waiting == 0
    # Still nothing running a little later, and the request never reached its 500 tokens.
    await asyncio.sleep(2)
    assert (await remote.status()).running == 0
    assert _counter(vllm_server, "vllm:generation_tokens_total") - generated_before < 500


async def test_remote_request_carries_the_tenant_salt(remote: RemoteEngine) -> None:
    from core.engine.base import EngineRequest, PreparedPrompt

    def body(tenant: str) -> dict[str, object]:
        request = EngineRequest(
            "r", tenant, cache_salt(remote.settings.secret_key, tenant), 0, 8, None
        )
        prompt = PreparedPrompt(messages=FRANCE, tokens=1)
        return remote._body(prompt, GenerationParams(max_tokens=8), request)["extra_body"]  # type: ignore[return-value]

    assert body("sales")["cache_salt"] != body("finance")["cache_salt"]
    assert body("sales")["cache_salt"] == cache_salt(remote.settings.secret_key, "sales")


async def test_remote_caps_and_bad_requests(remote: RemoteEngine) -> None:
    with pytest.raises(PromptTooLong):
        remote.stream_chat(
            FRANCE, GenerationParams(max_tokens=8), _options(remote, max_prompt_tokens=5)
        )
    with pytest.raises(InvalidRequest):
        remote.stream_chat(FRANCE, GenerationParams(max_tokens=10_000), _options(remote))
    # Something only the server refuses (a stop string longer than it accepts is fine; a
    # negative seed is not representable here), so: a huge priority outside int64.
    with pytest.raises(InvalidRequest):
        stream = remote.stream_chat(
            FRANCE, GenerationParams(max_tokens=8), _options(remote, priority=2**70)
        )
        [c async for c in stream]


async def test_unreachable_server_is_engine_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(remote_module, "START_TIMEOUT_S", 1.0)
    settings = Settings(
        data_dir=tmp_path, engine_backend="openai", engine_url=f"http://127.0.0.1:{free_port()}"
    )
    engine = RemoteEngine(settings)
    with pytest.raises(EngineUnavailable, match="did not answer"):
        await engine.start()
    assert not engine.ready
    with pytest.raises(EngineUnavailable):
        engine.stream_chat(FRANCE, GenerationParams(max_tokens=8), _options(engine))


def _tokenize_requests(url: str) -> float:
    """How many /tokenize requests the server has answered (its own request counter)."""
    lines = httpx.get(f"{url}/metrics", timeout=10).text.splitlines()
    counts = [line for line in lines if line.startswith("http_requests_total{")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in counts if '"/tokenize"' in line)


async def _started(settings: Settings) -> RemoteEngine:
    engine = RemoteEngine(settings)
    await engine.start()
    return engine


async def test_prepared_prompt_is_counted_once(remote: RemoteEngine, vllm_server: str) -> None:
    """Without a local tokenizer: one async /tokenize per prepare_prompt, none in stream_chat
    for the prompt prepared for it (a different one is counted again)."""
    before = _tokenize_requests(vllm_server)
    prompt = await remote.prepare_prompt(FRANCE)
    assert prompt.tokens == remote.count_prompt_tokens(FRANCE) == len(prompt.token_ids)
    assert _tokenize_requests(vllm_server) - before == 2
    params = GenerationParams(max_tokens=4, temperature=0.0)
    chunks = [c async for c in remote.stream_chat(FRANCE, params, _options(remote, prompt=prompt))]
    assert chunks[-1].prompt_tokens == prompt.tokens
    assert _tokenize_requests(vllm_server) - before == 2  # the prepared prompt was used
    other = [{"role": "user", "content": "And of Italy?"}]
    [c async for c in remote.stream_chat(other, params, _options(remote, prompt=prompt))]
    assert _tokenize_requests(vllm_server) - before == 3  # not its prompt: counted


async def test_local_tokenizer_counts_like_the_server(
    vllm_server: str, bundled_model_dir: Path, tmp_path: Path
) -> None:
    """The model folder's tokenizer is checked against the server at start, then counts here."""
    settings = Settings(
        data_dir=tmp_path, engine_backend="openai", engine_url=vllm_server,
        model=str(bundled_model_dir),
    )  # fmt: skip
    engine = await _started(settings)
    try:
        before = _tokenize_requests(vllm_server)
        story = [
            {"role": "system", "content": "You are the Sales team's assistant."},
            {"role": "user", "content": "Résumé of Q3, with numbers: 1,234.5 € and `code`?"},
        ]
        prompt = await engine.prepare_prompt(story)
        assert engine.count_prompt_tokens(story) == prompt.tokens
        assert _tokenize_requests(vllm_server) == before  # nothing asked of the server
        body = {"model": "smollm2-remote", "messages": story, "add_generation_prompt": True}
        served = httpx.post(f"{vllm_server}/tokenize", json=body, timeout=30).json()
        assert prompt.token_ids == served["tokens"]
    finally:
        await engine.stop()


async def test_configured_tokenizer_that_counts_otherwise_is_refused(
    vllm_server: str, bundled_model_dir: Path, tmp_path: Path
) -> None:
    """TENANTLLM_ENGINE_TOKENIZER that does not give the server's ids: ConfigError at start."""
    import json
    import shutil

    folder = tmp_path / "other-tokenizer"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (bundled_model_dir / name).is_file():
            shutil.copy(bundled_model_dir / name, folder / name)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    template = (
        config.get("chat_template") or (bundled_model_dir / "chat_template.jinja").read_text()
    )
    config["chat_template"] = "Preamble.\n" + template  # one more line than the server's
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    settings = Settings(
        data_dir=tmp_path / "data", engine_backend="openai", engine_url=vllm_server,
        engine_tokenizer=str(folder),
    )  # fmt: skip
    engine = RemoteEngine(settings)
    with pytest.raises(ConfigError, match="does not tokenize like"):
        await engine.start()
    await engine.stop()
    missing = settings.model_copy(update={"engine_tokenizer": str(tmp_path / "nothing-here")})
    with pytest.raises(ConfigError, match="cannot be loaded"):
        await RemoteEngine(missing).start()
