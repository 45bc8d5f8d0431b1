"""Engine numbers through core/engine/base.py: model preparation, engine ready time, and output
tokens/s for N concurrent requests of M tokens each (ignore_eos, so each gives exactly M).

    .venv/bin/python -m bench.engine_throughput [--concurrency 16] [--tokens 128] [--json]

Other benchmarks may import `measure_throughput(engine, ...)` with an engine they started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from core.config import Settings
from core.engine import Engine, create_engine
from core.engine.base import GenerationParams
from core.engine.model import ensure_bundled_model

PROMPTS = [
    "Write a story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "Describe a walk through a forest in autumn.",
    "Tell me about the history of bread.",
]


@dataclass
class ThroughputResult:
    """One run: how many requests, tokens each, total output tokens, wall time, tok/s."""

    concurrency: int
    tokens_per_request: int
    output_tokens: int
    seconds: float
    output_tokens_per_s: float
    all_complete: bool


async def measure_throughput(
    engine: Engine, *, concurrency: int = 16, tokens: int = 128
) -> ThroughputResult:
    """Send `concurrency` requests at once and time until the last one finishes."""
    params = GenerationParams(max_tokens=tokens, temperature=0.8, seed=1, ignore_eos=True)

    async def one(index: int) -> int:
        messages = [{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}]
        last = 0
        options = engine.default_options(f"bench-{index % 3}")
        async for chunk in engine.stream_chat(messages, params, options):
            last = chunk.completion_tokens
        return last

    await one(0)  # warm-up: first-request costs are not throughput
    started = time.perf_counter()
    counts = await asyncio.gather(*(one(i) for i in range(concurrency)))
    seconds = time.perf_counter() - started
    total = sum(counts)
    return ThroughputResult(
        concurrency=concurrency,
        tokens_per_request=tokens,
        output_tokens=total,
        seconds=round(seconds, 3),
        output_tokens_per_s=round(total / seconds, 1),
        all_complete=all(c == tokens for c in counts),
    )


async def run(data_dir: Path, concurrency: int, tokens: int) -> dict[str, object]:
    """Prepare the model, start the engine, measure, stop; every phase timed."""
    started = time.perf_counter()
    model_dir = await asyncio.to_thread(ensure_bundled_model, data_dir)
    prepare_s = time.perf_counter() - started
    settings = Settings(data_dir=data_dir, model=str(model_dir), max_num_seqs=max(concurrency, 16))
    engine = create_engine(settings)
    try:
        started = time.perf_counter()
        await engine.start()
        ready_s = time.perf_counter() - started
        result = await measure_throughput(engine, concurrency=concurrency, tokens=tokens)
    finally:
        await engine.stop()
    return {
        "model_prepare_s": round(prepare_s, 2),
        "engine_ready_s": round(ready_s, 2),
        **asdict(result),
        "cpus": os.cpu_count(),
    }


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--json", action="store_true", help="One JSON object only.")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout is the report
    report = asyncio.run(run(args.data_dir, args.concurrency, args.tokens))
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>22}: {value}")


if __name__ == "__main__":  # the engine core is a spawned process that re-imports this module
    main()
