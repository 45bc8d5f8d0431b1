"""Benchmark: the CPU engine with and without tcmalloc + Intel OpenMP preloaded.

`tenantllm serve` puts both in LD_PRELOAD for the engine's processes (core/cli/serve.py).
Here the product's engine (`create_engine`, the product's settings) runs in a subprocess of
its own on three sides: nothing preloaded, tcmalloc alone, and the environment `tenantllm
serve` builds (both), in the order A B C C B A in a full run (so a drift of the shared
machine hits every side alike), each doing the same requests: one request alone, then 16 at
once (128 tokens each, ignore_eos). Each subprocess reports which libraries its engine
processes (VLLM::*) have mapped, so the table shows that a side really ran with them.

    python -m bench.cpu_allocator worker --json   # one engine subprocess (what the bench runs)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import REPO, BenchContext, BenchResult, Table, ratio, target

WORKLOADS = ((1, 128), (16, 128))  # (concurrent requests, tokens each)
QUICK_WORKLOADS = ((1, 32), (4, 32))


SIDES = ("none", "tcmalloc", "both")


def _env(side: str) -> dict[str, str]:
    from core.cli.serve import find_iomp, find_tcmalloc, preload_env

    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if side == "none":
        return env
    built = preload_env(env, find_tcmalloc(), find_iomp() if side == "both" else None)
    if built is None:
        raise RuntimeError("tcmalloc or libiomp5 not found: run make setup")
    return built


def _run_worker(ctx: BenchContext, side: str, workloads: tuple[tuple[int, int], ...]) -> Any:
    spec = ",".join(f"{c}x{t}" for c, t in workloads)
    data = ctx.subdir("cpu-allocator") / side
    command = [sys.executable, "-m", "bench.cpu_allocator", "worker", "--workloads", spec]
    command += ["--model", str(ctx.model_dir), "--data-dir", str(data)]
    done = subprocess.run(
        command, cwd=REPO, env=_env(side), capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        raise RuntimeError(f"engine subprocess failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(ctx: BenchContext) -> BenchResult:
    """Alternate engine subprocesses over the three sides; output tokens/s of each."""
    result = BenchResult("cpu_allocator", "CPU engine: tcmalloc + Intel OpenMP preloaded or not")
    workloads = QUICK_WORKLOADS if ctx.quick else WORKLOADS
    order = SIDES if ctx.quick else (*SIDES, *reversed(SIDES))
    runs = [(side, _run_worker(ctx, side, workloads)) for side in order]
    rows, mean = [], {}
    for conc, tokens in workloads:
        key = f"{conc}x{tokens}"
        for side in SIDES:
            rates = [r["tok_s"][key] for s, r in runs if s == side]
            mean[(key, side)] = sum(rates) / len(rates)
        base = mean[(key, "none")]
        rows.append(
            [f"{conc}", f"{tokens}", base, mean[(key, "tcmalloc")], mean[(key, "both")],
             ratio(mean[(key, "tcmalloc")], base), ratio(mean[(key, "both")], base)]
        )  # fmt: skip
    result.tables.append(
        Table(
            "Output tokens/s, mean of the runs of each side (full run: A B C C B A)",
            [
                "concurrent",
                "tokens each",
                "nothing preloaded",
                "tcmalloc",
                "tcmalloc + iomp",
                "tcmalloc / none",
                "both / none",
            ],
            rows,
        )
    )
    result.tables.append(
        Table(
            "Each engine subprocess in run order: libraries its VLLM:: processes had mapped",
            ["run", "side", "tcmalloc mapped", "libiomp5 mapped", "ready s"]
            + [f"{c}x{t} tok/s" for c, t in workloads],
            [
                [f"{i + 1}", p, r["tcmalloc_mapped"], r["iomp_mapped"], r["ready_s"]]
                + [r["tok_s"][f"{c}x{t}"] for c, t in workloads]
                for i, (p, r) in enumerate(runs)
            ],
        )
    )
    result.data = {"runs": [{"side": p, **r} for p, r in runs]}
    batch = f"{workloads[-1][0]}x{workloads[-1][1]}"
    result.targets.append(
        target(
            f"tcmalloc + iomp (serve's preload) / none, output tok/s at {workloads[-1][0]} "
            "concurrent",
            ratio(mean[(batch, "both")], mean[(batch, "none")]),
            "x",
            ">=",
            1.0,
        )
    )
    result.notes.append(
        "Preload = the LD_PRELOAD `tenantllm serve` builds (core/cli/serve.py `preload_env`): "
        f"{_env('both').get('LD_PRELOAD', '')}. Without it vLLM preloads PyTorch's libgomp "
        "itself (vllm/platforms/cpu.py) and warns that tcmalloc and libiomp are missing."
    )
    return result


# --- the engine subprocess ------------------------------------------------------------------
def _engine_maps() -> tuple[bool, bool]:
    import psutil

    found = [False, False]
    for proc in psutil.Process().children(recursive=True):
        try:
            if "VLLM" not in " ".join(proc.cmdline()):
                continue
            maps = Path(f"/proc/{proc.pid}/maps").read_text()
        except (psutil.Error, OSError):
            continue
        found[0] |= "libtcmalloc" in maps
        found[1] |= "libiomp5" in maps
    return found[0], found[1]


async def _worker(model: str, data_dir: Path, workloads: list[tuple[int, int]]) -> dict[str, Any]:
    import time

    from bench.engine_throughput import measure_throughput
    from core.config import Settings
    from core.engine import create_engine

    data_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(data_dir=data_dir, model=model)
    engine = create_engine(settings)
    started = time.perf_counter()
    await engine.start()
    report: dict[str, Any] = {"ready_s": round(time.perf_counter() - started, 1), "tok_s": {}}
    try:
        report["tcmalloc_mapped"], report["iomp_mapped"] = _engine_maps()
        for conc, tokens in workloads:
            measured = await measure_throughput(engine, concurrency=conc, tokens=tokens)
            report["tok_s"][f"{conc}x{tokens}"] = measured.output_tokens_per_s
    finally:
        await engine.stop()
    return report


def main() -> None:
    """`worker`: start the product engine, measure the workloads, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["worker"])
    parser.add_argument("--workloads", default="1x128,16x128")
    parser.add_argument("--model", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout is the report
    workloads = [tuple(int(x) for x in w.split("x")) for w in args.workloads.split(",")]
    report = asyncio.run(_worker(args.model, args.data_dir, workloads))  # type: ignore[arg-type]
    print(json.dumps(report))


if __name__ == "__main__":  # the engine core is a spawned process that re-imports this module
    main()
