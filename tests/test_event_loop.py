"""Nothing on the request path blocks the event loop: the app on the remote engine, under load.

The real app (`create_app`: every middleware, API key, rate limits, retrieval, prompt, fair
share, audit, SSE) is served by uvicorn on the test's own event loop, with the `openai`
backend against the real vLLM server of the run (`vllm_server`), while 16 streamed chat turns
overlap. Two detectors watch the loop thread:

1. asyncio's debug mode times every callback and logs "Executing <handle> took N seconds" for
   any over `loop.slow_callback_duration`; the test collects those warnings from the
   `asyncio` logger and fails on any. The bound, `SLOW_CALLBACK_S` = 200 ms: a stall a user
   feels in every stream of the process. It cannot be much lower here: on this shared 2-core
   machine (load average 11 to 17) trivial callbacks (a timer setting a future) were seen at
   50 to 60 ms, preempted, and a gen-2 garbage collection of the test process's heap (torch,
   transformers, Chroma) took 1.3 s, which is why the fixture freezes the heap after start.
2. Because a blocking round trip to a quiet server takes only 20 to 50 ms (measured with the
   old synchronous /tokenize: inside that noise), a profile hook on the loop thread also
   records every call on a blocking socket (`sys.setprofile`, C calls of socket methods on a
   socket whose timeout is not 0: asyncio's own sockets are non-blocking), however short. The
   old `_prepare` fails this check on every turn; blocking I/O in worker threads is not seen.

It is run twice: prompts counted by the model's own tokenizer here, and by the server's
/tokenize (one async call per turn, which the server's own request counter proves).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import socket
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from core.auth.apikeys import create_key
from core.config import Settings
from core.server import create_app
from core.services import build_services
from tests.fixtures.common import free_port

pytestmark = [pytest.mark.engine, pytest.mark.timeout(1800)]

SLOW_CALLBACK_S = 0.2
SOCKET_CALLS = frozenset({"connect", "accept", "recv", "recv_into", "recvfrom", "send", "sendall"})
TURNS = 16  # started 150 ms apart: each is prepared while earlier ones stream
QUESTION = "Write three sentences about the sea."


@dataclass
class RunningApp:
    """The app served on this test's loop: where, with which key, counting how."""

    base_url: str
    api_key: str
    counting: str  # "local" (the model folder's tokenizer) or "server" (its /tokenize)


@pytest.fixture(scope="module", params=["local", "server"])
async def remote_app(
    request: pytest.FixtureRequest,
    vllm_server: str,
    bundled_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[RunningApp]:
    """`create_app` on the remote engine under uvicorn, on the loop the tests run on."""
    counting = request.param
    data_dir = tmp_path_factory.mktemp(f"event-loop-{counting}")
    settings = Settings(
        data_dir=data_dir,
        engine_backend="openai",
        engine_url=vllm_server,
        # `bundled` in a fresh data dir is not converted there: no tokenizer on this machine.
        model=str(bundled_model_dir) if counting == "local" else "bundled",
        rate_limit_user="100000/minute",
        rate_limit_tenant="100000/minute",
    )
    services = build_services(settings, with_engine=True)
    key = create_key(settings, tenant_id="sales", created_by="test").secret
    port = free_port()
    config = uvicorn.Config(
        create_app(settings, services), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    base_url = f"http://127.0.0.1:{port}"
    try:
        await _until_ready(base_url, serving)
        # One turn first: the embedding model loads in a worker thread at the first retrieval
        # (seconds of Python holding the GIL the loop waits for): a start cost, not the path.
        async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
            assert (await _turn(client, key, 0.0)).strip()
        # What exists now lives for the process: no later collection needs to scan it again.
        gc.collect()
        gc.freeze()
        yield RunningApp(base_url, key, counting)
    finally:
        gc.unfreeze()
        server.should_exit = True
        await serving


async def _until_ready(base_url: str, serving: asyncio.Task[None]) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
        for _ in range(600):
            if serving.done():
                serving.result()  # raises what stopped it
                pytest.fail("the app stopped before it was ready")
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
    pytest.fail("the app was not ready in 300 s")


class _SlowCallbacks(logging.Handler):
    """Collects asyncio's debug-mode warnings about callbacks over the bound; for the report,
    where the loop thread was when it stalled and the garbage collector's long pauses."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.stalls: list[str] = []  # the loop thread's stack, sampled in each stall
        self.gc_pauses: list[str] = []
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._beat = time.monotonic()
        self._gc_started = 0.0
        self._done = threading.Event()
        self.blocking_io: list[str] = []  # socket calls that block, made on the loop thread

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Executing "):
            self.messages.append(message)

    def start(self) -> None:
        """Heartbeat on the loop, a watchdog thread sampling the stack when it stops."""
        self._tick()
        threading.Thread(target=self._watch, daemon=True).start()
        gc.callbacks.append(self._gc)

    def stop(self) -> None:
        """Stop the watchdog and the GC timing."""
        self._done.set()
        gc.callbacks.remove(self._gc)

    def report(self) -> str:
        """The slow callbacks, then where the loop was stuck, then GC pauses."""
        parts = [*self.messages[:10], *self.stalls[:5], *self.gc_pauses[:10]]
        return f"{len(self.messages)} callbacks over {SLOW_CALLBACK_S * 1000:.0f} ms:\n" + (
            "\n".join(parts)
        )

    def profile(self, frame: Any, event: str, arg: Any) -> None:
        """`sys.setprofile` hook of the loop thread: a socket call that may block."""
        if event != "c_call" or getattr(arg, "__name__", "") not in SOCKET_CALLS:
            return
        sock = getattr(arg, "__self__", None)
        if isinstance(sock, socket.socket) and sock.gettimeout() != 0.0:
            stack = "".join(traceback.format_stack(frame)[-10:])
            self.blocking_io.append(f"blocking socket {arg.__name__} on the loop, at:\n{stack}")

    def _tick(self) -> None:
        self._beat = time.monotonic()
        if not self._done.is_set():
            self._loop.call_later(0.005, self._tick)

    def _watch(self) -> None:
        sampled = 0.0
        while not self._done.wait(0.01):
            beat = self._beat
            stalled = time.monotonic() - beat
            if stalled > SLOW_CALLBACK_S and sampled != beat:
                sampled = beat
                frame = sys._current_frames().get(self._loop_thread)
                stack = "".join(traceback.format_stack(frame)[-12:]) if frame else "?"
                self.stalls.append(f"loop stalled {stalled * 1000:.0f} ms so far, in:\n{stack}")

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.monotonic()
        elif (took := time.monotonic() - self._gc_started) > SLOW_CALLBACK_S / 2:
            self.gc_pauses.append(f"gc generation {info['generation']} took {took * 1000:.0f} ms")


@pytest.fixture
async def slow_callbacks() -> AsyncIterator[_SlowCallbacks]:
    """Debug mode on the running loop, with the bound, for the test; restored after."""
    loop = asyncio.get_running_loop()
    saved = (loop.get_debug(), loop.slow_callback_duration)
    handler = _SlowCallbacks(loop)
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    loop.set_debug(True)
    loop.slow_callback_duration = SLOW_CALLBACK_S
    handler.start()
    sys.setprofile(handler.profile)  # this thread only: the loop's
    try:
        yield handler
    finally:
        sys.setprofile(None)
        handler.stop()
        loop.set_debug(saved[0])
        loop.slow_callback_duration = saved[1]
        logger.removeHandler(handler)


async def _tokenize_requests(vllm_server: str) -> float:
    """How many /tokenize requests the server has answered (its own request counter)."""
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"{vllm_server}/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("http_requests_total{") and 'handler="/tokenize"' in line
    )


async def _turn(client: httpx.AsyncClient, api_key: str, delay: float) -> str:
    """One streamed chat turn through the API; its answer's text."""
    await asyncio.sleep(delay)
    body = {
        "model": "sales",
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 48,
        "temperature": 0,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {api_key}"}
    text = ""
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                choices = json.loads(line[6:])["choices"]
                text += "".join(c["delta"].get("content") or "" for c in choices)
    return text


async def test_no_callback_blocks_the_loop_during_chat_turns(
    remote_app: RunningApp, vllm_server: str, slow_callbacks: _SlowCallbacks
) -> None:
    tokenized_before = await _tokenize_requests(vllm_server)
    limits = httpx.Limits(max_connections=TURNS)
    async with httpx.AsyncClient(base_url=remote_app.base_url, timeout=600, limits=limits) as c:
        turns = (_turn(c, remote_app.api_key, 0.15 * i) for i in range(TURNS))
        answers = await asyncio.gather(*turns)
    assert all(answer.strip() for answer in answers)  # every turn streamed an answer
    assert slow_callbacks.blocking_io == [], (
        f"{len(slow_callbacks.blocking_io)} blocking socket calls on the loop; the first:\n"
        + "\n".join(slow_callbacks.blocking_io[:3])
    )
    assert slow_callbacks.messages == [], slow_callbacks.report()
    # Exactly one tokenization per turn: none at the server when counted here, else one each.
    tokenized = await _tokenize_requests(vllm_server) - tokenized_before
    assert tokenized == (0 if remote_app.counting == "local" else TURNS)
