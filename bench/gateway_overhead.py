"""Benchmark: the remote-engine path against vLLM direct and LiteLLM's proxy (issue 19).

Three sides on ONE vLLM OpenAI-compatible server (`bench.engines.VllmServer`, the product's
engine settings), measured in the same run:

(a) direct: the server itself, sent the bench tenant's rendered messages;
(b) LiteLLM's proxy (`litellm --config`, a master key, no database), the gateway teams put
    in front of vLLM for keys and limits, sent the same messages; it runs from its own venv,
    bench/.venv-litellm (gitignored), created here on first use: never in the app's venv;
(c) tenantllm with `TENANTLLM_ENGINE_BACKEND=openai` (`bench.engines.AppProcess`: API key,
    bench tenant with retrieval off, the full chat turn), sent the bare question, which it
    renders into the same messages.

TTFT: paired rounds at concurrency 1, one request per side per round in rotating order with
a pause between requests (vLLM's CPU worker spins a core for ~1 s after its last request);
the added TTFT of a side is the median of its per-round difference to direct. Throughput:
output tokens/s at concurrency 1, 8 and 16, each side a closed-loop run, the sides in the
order a-b-c then c-b-a, so drift of the machine hits all alike. Greedy, fixed seed, 48
tokens. Targets: tenantllm's added TTFT <= LiteLLM's, tokens/s >= 0.95x direct.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    BenchContext,
    BenchResult,
    LoadResult,
    RequestStats,
    Table,
    closed_loop,
    free_port,
    percentile,
    ratio,
    target,
)
from bench.engines import QUESTIONS, AppProcess, VllmServer, bench_tenant, http_request
from bench.overhead import QUIET_S

LITELLM_VENV = REPO / "bench" / ".venv-litellm"
LITELLM_REQUIREMENT = "litellm[proxy]==1.108.7"  # pinned: the comparison is with one release
SIDES = ("direct", "litellm", "tenantllm")
CONCURRENCY = (1, 8, 16)
MAX_TOKENS = 48
NAMES = {
    "direct": "vLLM's OpenAI server, direct",
    "litellm": "LiteLLM proxy -> vLLM",
    "tenantllm": "tenantllm, remote backend -> vLLM",
}

Call = Callable[[int], Awaitable[RequestStats]]


# --- LiteLLM's proxy, from its own venv -----------------------------------------------------
def ensure_litellm_venv() -> Path:
    """bench/.venv-litellm with LiteLLM's proxy installed (once); its `litellm` command."""
    exe = LITELLM_VENV / "bin" / "litellm"
    if exe.exists():
        return exe
    print(f"[bench] installing {LITELLM_REQUIREMENT} into {LITELLM_VENV} (once)", flush=True)
    # The base interpreter, not the app's venv: nothing of LiteLLM may reach the app's venv.
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(LITELLM_VENV)], check=True)
    pip = [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, LITELLM_REQUIREMENT], check=True)
    return exe


class LiteLLMProxy:
    """`litellm --config` with one model, `bench`, routed to the vLLM server's served model."""

    def __init__(self, work: Path, server: VllmServer) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.api_key = "sk-bench-litellm"
        self.model = "bench"
        self.log_path = work / "litellm.log"
        self.config_path = work / "litellm.yaml"
        config = {  # JSON is YAML: no YAML writer needed
            "model_list": [
                {
                    "model_name": self.model,
                    "litellm_params": {
                        "model": f"hosted_vllm/{server.model}",
                        "api_base": f"{server.base_url}/v1",
                        "api_key": "none",
                    },
                }
            ],
            "general_settings": {"master_key": self.api_key},
        }
        self.config_path.write_text(json.dumps(config, indent=2))
        # Offline: its bundled model-cost map instead of a download at start; quiet logs.
        self.env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
        self.env.pop("DATABASE_URL", None)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 600) -> float:
        """Install (once) and start the proxy; wait until it answers; the seconds it took."""
        import httpx

        exe = ensure_litellm_venv()
        started = time.monotonic()
        command = [
            str(exe), "--config", str(self.config_path), "--host", "127.0.0.1",
            "--port", str(self.port), "--num_workers", "1", "--telemetry", "False",
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"LiteLLM exited:\n{self.log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/health/liveliness", timeout=2).status_code == 200:
                    return time.monotonic() - started
            time.sleep(1)
        raise RuntimeError(f"LiteLLM not up in time:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        """Terminate the proxy (its own process group: its workers go with it)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, 15)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()


# --- the measurement ----------------------------------------------------------------------
def _calls(
    clients: dict[str, Any], server: VllmServer, proxy: LiteLLMProxy, app: AppProcess, seed: int
) -> dict[str, Callable[[int, int], Awaitable[RequestStats]]]:
    """Request i with `tokens` output tokens, for each side: the same prompt on all three."""
    template = bench_tenant().prompt
    rendered = [template.render(question=q, sources=[], history=[]) for q in QUESTIONS]
    n = len(QUESTIONS)
    return {
        "direct": lambda i, tokens: http_request(
            clients["direct"], "none", "", tokens, seed, server.model, rendered[i % n]
        ),
        "litellm": lambda i, tokens: http_request(
            clients["litellm"], proxy.api_key, "", tokens, seed, proxy.model, rendered[i % n]
        ),
        "tenantllm": lambda i, tokens: http_request(
            clients["tenantllm"], app.api_key, QUESTIONS[i % n], tokens, seed
        ),
    }


async def _measure(
    ctx: BenchContext, server: VllmServer, proxy: LiteLLMProxy, app: AppProcess
) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    urls = {"direct": server.base_url, "litellm": proxy.base_url, "tenantllm": app.base_url}
    async with contextlib.AsyncExitStack() as stack:
        clients = {
            side: await stack.enter_async_context(
                httpx.AsyncClient(base_url=url, timeout=600, limits=limits)
            )
            for side, url in urls.items()
        }
        calls = _calls(clients, server, proxy, app, ctx.seed)
        for side in SIDES:  # warm up: connections, caches, each side's first requests
            await closed_loop(_with_tokens(calls[side], MAX_TOKENS), 4, 4)
        ttft = await _paired_ttft(ctx, calls)
        runs = await _throughput(ctx, calls)
    return {"ttft_ms": ttft, "runs": runs}


async def _paired_ttft(
    ctx: BenchContext, calls: dict[str, Callable[[int, int], Awaitable[RequestStats]]]
) -> dict[str, list[float]]:
    """TTFT (ms) at concurrency 1, one request per side per round, order rotating."""
    ttft: dict[str, list[float]] = {side: [] for side in SIDES}
    for i in range(ctx.scale(30, 3)):
        for k in range(len(SIDES)):
            side = SIDES[(i + k) % len(SIDES)]
            ttft[side].append((await calls[side](i, 4)).ttft * 1000.0)
            await asyncio.sleep(QUIET_S)
    return ttft


async def _throughput(
    ctx: BenchContext, calls: dict[str, Callable[[int, int], Awaitable[RequestStats]]]
) -> dict[str, dict[int, list[LoadResult]]]:
    """Closed-loop runs per side and concurrency, sides a-b-c then c-b-a."""
    runs: dict[str, dict[int, list[LoadResult]]] = {side: {} for side in SIDES}
    for conc in CONCURRENCY:
        n = ctx.scale(max(8, 2 * conc), conc)
        for order in (SIDES, SIDES[::-1])[: ctx.scale(2, 1)]:
            for side in order:
                result = await closed_loop(_with_tokens(calls[side], MAX_TOKENS), n, conc)
                runs[side].setdefault(conc, []).append(result)
                await asyncio.sleep(QUIET_S)
    return runs


def _paired_median(a: list[float], b: list[float]) -> float:
    """Median of a[i] - b[i] over the rounds where both sides produced a token."""
    return percentile([x - y for x, y in zip(a, b, strict=True) if x == x and y == y], 50)


def _tokens_per_s(runs: list[LoadResult]) -> float:
    return ratio(sum(x.tokens for r in runs for x in r.requests), sum(r.wall for r in runs))


def _ttft_p50(runs: list[LoadResult]) -> float:
    return percentile([t for r in runs for t in r.ttft_ms()], 50)


def _with_tokens(call: Callable[[int, int], Awaitable[RequestStats]], tokens: int) -> Call:
    """`call` as `closed_loop` wants it: request i, `tokens` output tokens."""
    return lambda i: call(i, tokens)


# --- the report -----------------------------------------------------------------------------
def _ttft_section(result: BenchResult, ttft: dict[str, list[float]]) -> dict[str, Any]:
    rows, data = [], {}
    for side in SIDES:
        done = [t for t in ttft[side] if t == t]
        added = _paired_median(ttft[side], ttft["direct"]) if side != "direct" else 0.0
        data[side] = {"p50": percentile(done, 50), "p95": percentile(done, 95), "added": added}
        rows.append([NAMES[side], data[side]["p50"], data[side]["p95"], added, len(done)])
    caption = (
        "TTFT (ms) at concurrency 1: one request per side per round, order rotating; added = "
        "median of the per-round difference to direct"
    )
    headers = ["side", "TTFT p50", "TTFT p95", "added over direct (p50)", "requests"]
    result.tables.append(Table(caption, headers, rows))
    result.targets.append(
        target(
            "gateway: tenantllm's TTFT added over direct minus LiteLLM's (paired, p50)",
            data["tenantllm"]["added"] - data["litellm"]["added"],
            "ms",
            "<=",
            0.0,
        )
    )
    return data


def _throughput_section(
    result: BenchResult, runs: dict[str, dict[int, list[LoadResult]]]
) -> dict[str, Any]:
    rows, data = [], {}
    for conc in CONCURRENCY:
        per_side = {side: _tokens_per_s(runs[side][conc]) for side in SIDES}
        ttft = {side: _ttft_p50(runs[side][conc]) for side in SIDES}
        litellm_x = ratio(per_side["litellm"], per_side["direct"])
        ours_x = ratio(per_side["tenantllm"], per_side["direct"])
        data[str(conc)] = {
            "tokens_per_s": per_side,
            "ttft_p50_ms": ttft,
            "litellm_x": litellm_x,
            "tenantllm_x": ours_x,
        }
        tput = [per_side[side] for side in SIDES]
        rows.append([conc, *tput, litellm_x, ours_x, *(ttft[side] for side in SIDES)])
        name = f"gateway: tenantllm tokens/s / direct at concurrency {conc}"
        result.targets.append(target(name, ours_x, "x", ">=", 0.95))
    caption = (
        f"Output tokens/s, max_tokens={MAX_TOKENS}, greedy; each side pooled over its two "
        "runs per concurrency (order a-b-c, then c-b-a)"
    )
    headers = [
        "concurrency",
        "direct tok/s",
        "LiteLLM tok/s",
        "tenantllm tok/s",
        "LiteLLM / direct",
        "tenantllm / direct",
        "TTFT p50 direct",
        "TTFT p50 LiteLLM",
        "TTFT p50 tenantllm",
    ]
    result.tables.append(Table(caption, headers, rows))
    return data


def run(ctx: BenchContext) -> BenchResult:
    """Direct vLLM, LiteLLM's proxy and tenantllm's remote backend on one vLLM server."""
    result = BenchResult("gateway", "Remote engine: tenantllm vs LiteLLM's proxy vs vLLM direct")
    assert ctx.model_dir is not None
    server = VllmServer(ctx.subdir("gateway-vllm"), ctx.model_dir)
    proxy = LiteLLMProxy(ctx.subdir("gateway-litellm"), server)
    app = AppProcess(
        ctx.subdir("gateway-app"),
        ctx.model_dir,
        {"TENANTLLM_ENGINE_BACKEND": "openai", "TENANTLLM_ENGINE_URL": server.base_url},
    )
    try:
        server_start = server.start()  # first: the app's engine start needs it answering
        with ThreadPoolExecutor(1) as pool:
            proxy_started = pool.submit(proxy.start)
            app_start = app.start()
            proxy_start = proxy_started.result()
        measured = ctx.run(_measure(ctx, server, proxy, app))
    finally:
        app.stop()
        proxy.stop()
        server.stop()
    ttft = _ttft_section(result, measured["ttft_ms"])
    throughput = _throughput_section(result, measured["runs"])
    result.data = {
        "ttft": ttft,
        "ttft_ms": measured["ttft_ms"],
        "throughput": throughput,
        "max_tokens": MAX_TOKENS,
        "litellm": LITELLM_REQUIREMENT,
        "start_s": {"vllm": server_start, "litellm": proxy_start, "tenantllm": app_start},
    }
    result.notes.append(
        f"One vLLM server (started in {server_start:.0f} s) behind all three sides. LiteLLM "
        f"({LITELLM_REQUIREMENT}, one worker, master key, no database: no virtual keys or "
        f"spend logs) started in {proxy_start:.0f} s; tenantllm (API key, RBAC, rate limits, "
        f"retrieval call, template, hooks, fair share, audit; prompts counted by the model's "
        f"own tokenizer, checked against the server at start) in {app_start:.0f} s."
    )
    return result
