"""Nothing on the request path blocks the event loop: the app on the remote engine, under load.

The real app (`create_app`: every middleware, API key, rate limits, retrieval, prompt, fair
share, audit, SSE) is served by uvicorn on the test's own event loop, with the `openai`
backend against the real vLLM server of the run (`vllm_server`), while 16 streamed chat turns
overlap. A profile hook on the loop thread (`sys.setprofile`, this thread only) records what
would block it, however briefly:

1. every call on a blocking socket (C calls of socket methods on a socket whose timeout is not
   0: asyncio's own sockets are non-blocking). The old synchronous /tokenize round trip took
   20 to 50 ms, too short to tell from a shared machine's noise by timing, yet this check fails
   on every turn with it;
2. every entry into a library whose calls block: the database (SQLAlchemy, sqlite3, psycopg),
   Chroma, the tokenizer and the embedding model (tokenizers, transformers, torch,
   llama-index's embeddings) and the synchronous Redis client. Those run in worker threads.

No durations are measured: on these shared 2-core machines a callback's time says more about
the neighbours than about the code (a run at load 11 saw trivial callbacks take 800 ms).

It is run twice: prompts counted by the model's own tokenizer here, and by the server's
/tokenize (one async call per turn, which the server's own request counter proves).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import traceback
from collections.abc import AsyncIterator, Iterator
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
        # One turn first, unwatched: what loads once (the embedding model, Chroma's client)
        # is a start cost, not the request path.
        async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
            assert (await _turn(client, key, 0.0)).strip()
        yield RunningApp(base_url, key, counting)
    finally:
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


# Where a Python frame's code lives, for the libraries whose calls block the calling thread.
BLOCKING_PACKAGES = tuple(
    f"{os.sep}site-packages{os.sep}{name}{os.sep}"
    for name in ("sqlalchemy", "psycopg", "psycopg2", "chromadb", "tokenizers", "transformers",
                 "torch", "sentence_transformers", "onnxruntime")
) + (
    f"{os.sep}llama_index{os.sep}embeddings{os.sep}",
    f"{os.sep}redis{os.sep}client.py",  # the synchronous client (redis.asyncio is elsewhere)
    f"{os.sep}sqlite3{os.sep}",
)  # fmt: skip


class _LoopWatch:
    """What the loop thread did that blocks: socket calls and entries into blocking libraries."""

    def __init__(self) -> None:
        self.blocking_io: list[str] = []  # socket calls that block, made on the loop thread
        self.blocking_calls: dict[str, str] = {}  # library entry point -> the stack into it

    def profile(self, frame: Any, event: str, arg: Any) -> None:
        """`sys.setprofile` hook of the loop thread."""
        if event == "call":
            self._library_call(frame)
        elif event == "c_call" and getattr(arg, "__name__", "") in SOCKET_CALLS:
            sock = getattr(arg, "__self__", None)
            if isinstance(sock, socket.socket) and sock.gettimeout() != 0.0:
                stack = "".join(traceback.format_stack(frame)[-10:])
                self.blocking_io.append(f"blocking socket {arg.__name__} on the loop, at:\n{stack}")

    def _library_call(self, frame: Any) -> None:
        code = frame.f_code
        if not any(part in code.co_filename for part in BLOCKING_PACKAGES):
            return
        caller = frame.f_back
        if caller is not None and any(p in caller.f_code.co_filename for p in BLOCKING_PACKAGES):
            return  # inside the library already: only its entry point is reported
        entry = f"{code.co_filename}:{code.co_name}"
        if entry not in self.blocking_calls:
            self.blocking_calls[entry] = "".join(traceback.format_stack(frame)[-8:])

    def report(self) -> str:
        """The socket calls, then each library entered, with where from."""
        calls = [f"{entry}, called at:\n{stack}" for entry, stack in self.blocking_calls.items()]
        return "\n".join([*self.blocking_io[:3], *calls[:5]])


@pytest.fixture
def loop_watch() -> Iterator[_LoopWatch]:
    """The profile hook on this thread (the loop's) for the test; removed after."""
    watch = _LoopWatch()
    sys.setprofile(watch.profile)
    try:
        yield watch
    finally:
        sys.setprofile(None)


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


async def test_nothing_blocks_the_loop_during_chat_turns(
    remote_app: RunningApp, vllm_server: str, loop_watch: _LoopWatch
) -> None:
    tokenized_before = await _tokenize_requests(vllm_server)
    limits = httpx.Limits(max_connections=TURNS)
    async with httpx.AsyncClient(base_url=remote_app.base_url, timeout=600, limits=limits) as c:
        turns = (_turn(c, remote_app.api_key, 0.15 * i) for i in range(TURNS))
        answers = await asyncio.gather(*turns)
    sys.setprofile(None)  # the checks below are not the app's
    assert all(answer.strip() for answer in answers)  # every turn streamed an answer
    assert loop_watch.blocking_io == [], (
        f"{len(loop_watch.blocking_io)} blocking socket calls on the loop:\n" + loop_watch.report()
    )
    assert loop_watch.blocking_calls == {}, (
        f"{len(loop_watch.blocking_calls)} blocking libraries entered on the loop:\n"
        + loop_watch.report()
    )
    # Exactly one tokenization per turn: none at the server when counted here, else one each.
    tokenized = await _tokenize_requests(vllm_server) - tokenized_before
    assert tokenized == (0 if remote_app.counting == "local" else TURNS)
