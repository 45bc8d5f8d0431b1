"""Run the benchmark suite and write bench/results/latest.{json,md} and the plots.

    python -m bench.run            # the full suite (`make bench`), < 20 minutes on 2 cores
    python -m bench.run --quick    # tiny sizes, for developing the harness
    python -m bench.run --only audit,retrieval
    python -m bench.run --only prefix --merge   # re-run some, keep the others' results

Each benchmark module has `run(ctx) -> BenchResult`. One failing benchmark is reported (its
error goes into the results) and the others still run. Quick runs write to a scratch folder,
never over the committed results.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    RESULTS_DIR,
    BenchContext,
    BenchResult,
    machine_info,
    markdown_table,
    targets_table,
)
from bench.merge import merge_results

# Order: the engine benchmarks share one product engine, stopped before the CPU-only ones;
# retrieval goes last because it sizes its biggest store to the time budget that is left
# (quality, before it, ingests the 10-Q reports from ../shared/eval/ when they are there).
BENCHMARKS: dict[str, str] = {
    "audit": "bench.audit_overhead",
    "siem": "bench.siem_throughput",
    "overhead": "bench.overhead",
    "shared": "bench.shared_vs_separate",
    "fairness": "bench.fairness",
    "metrics": "bench.metrics_overhead",
    "prefix": "bench.prefix_cache",
    "scaling": "bench.scaling",
    "budgets": "bench.budget_overhead",
    "response_cache": "bench.response_cache",
    "gateway": "bench.gateway_overhead",
    "replicas": "bench.replicas",
    "answers": "bench.answer_quality",
    "adapters": "bench.adapters",
    "cpu_allocator": "bench.cpu_allocator",
    "retrieval_server": "bench.retrieval_server",
    "quality": "bench.retrieval_quality",
    "retrieval": "bench.retrieval_bench",
    "embeddings": "bench.embedding_bench",
}
ENGINE_BENCHMARKS = {
    "overhead", "shared", "fairness", "metrics", "prefix", "scaling", "budgets", "answers",
    "response_cache", "adapters",
}  # fmt: skip


_ENV_AT_START: dict[str, str] = {}


def _env() -> None:
    # Nothing may be downloaded at run time; tokenizers' own threads fight the engine for CPU.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    prefixes = ("VLLM_", "OMP_", "TENANTLLM_", "HF_HUB_OFFLINE", "TOKENIZERS_")
    _ENV_AT_START.update({k: v for k, v in os.environ.items() if k.startswith(prefixes)})


def _model_dir() -> Path:
    override = os.environ.get("BENCH_MODEL_DIR")
    if override:
        return Path(override).resolve()
    from core.engine.model import ensure_bundled_model

    return ensure_bundled_model(REPO / "data")


def _run_one(key: str, ctx: BenchContext) -> BenchResult:
    started = time.perf_counter()
    print(f"[bench] {key} ...", flush=True)
    try:
        module = importlib.import_module(BENCHMARKS[key])
        result: BenchResult = module.run(ctx)
    except Exception as exc:
        result = BenchResult(key, key, error=f"{type(exc).__name__}: {exc}")
        result.notes.append("```\n" + traceback.format_exc()[-3000:] + "\n```")
    result.seconds = time.perf_counter() - started
    status = "FAILED: " + result.error if result.error else "ok"
    print(f"[bench] {key} {status} in {result.seconds:.0f} s", flush=True)
    for t in result.targets:
        print(
            f"    {'MET ' if t['met'] else 'MISS'} {t['name']}: {t['value']} {t['unit']} "
            f"(target {t['target']})",
            flush=True,
        )
    return result


def _section(result: BenchResult) -> str:
    parts = [f"## {result.title}", f"_{result.seconds:.0f} s_"]
    if result.error:
        parts.append(f"**Failed:** {result.error}")
    for table in result.tables:
        parts.append(f"**{table.caption}**\n\n" + markdown_table(table.headers, table.rows))
    if result.targets:
        parts.append(targets_table(result.targets))
    for plot in result.plots:
        parts.append(f"![{result.key}]({plot})")
    parts += result.notes
    return "\n\n".join(parts)


def write_markdown(path: Path, report: dict[str, Any], results: list[BenchResult]) -> None:
    """The human report: summary of every target first, then one section per benchmark."""
    machine = report["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    met = sum(t["met"] for t in report["targets"])
    head = [
        "# tenantllm benchmark results",
        f"Generated {report['generated_at']} in {report['duration_s']:.0f} s "
        f"({'quick' if report['quick'] else 'full'} run, commit {machine['git_commit']}).",
        f"Machine: {machine['cpu']}, {machine['logical_cores']} logical cores, "
        f"{machine['memory_gib']} GiB, load average (1/5/15 min) at start "
        f"{machine['load_average_at_start']}, at end {report.get('load_average_at_end')}, "
        f"{machine['os']}, Python {machine['python']}.",
        f"Versions: {versions}.",
        "Every figure is compared with a baseline measured in the same run; absolute numbers "
        "on a shared 2-core machine drift between runs, ratios much less.",
        f"## Summary: {met} of {len(report['targets'])} targets met",
        targets_table(report["targets"]),
    ]
    body = [_section(r) for r in results]
    path.write_text("\n\n".join(head + body) + "\n")


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become null (JSON has neither)."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _settings_record(keys: list[str], ctx: BenchContext) -> dict[str, Any]:
    """What the numbers depend on: the benchmarks run, the seed, the engine settings."""
    from core.config import Settings

    engine_fields = (
        "engine_backend",
        "max_model_len",
        "kv_cache_gib",
        "max_num_seqs",
        "enforce_eager",
        "tenant_max_concurrency",
        "audit_flush_interval_ms",
        "top_k",
        "chunk_size",
        "chunk_overlap",
    )
    defaults = Settings(data_dir=ctx.work_dir, model=str(ctx.model_dir))
    return {
        "benchmarks": keys,
        "quick": ctx.quick,
        "seed": ctx.seed,
        "model_dir": str(ctx.model_dir),
        "product_settings": {f: getattr(defaults, f) for f in engine_fields},
        "env_at_start": _ENV_AT_START,
    }


def _write(
    out_dir: Path,
    started: float,
    quick: bool,
    machine: dict[str, Any],
    keys: list[str],
    ctx: BenchContext,
    results: list[BenchResult],
) -> None:
    """Write latest.json and latest.md for the benchmarks finished so far."""
    report = {
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "duration_s": time.perf_counter() - started,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "quick": quick,
        "machine": machine,
        "settings": _settings_record(keys, ctx),
        "targets": [t for r in results for t in r.targets],
        "benchmarks": {
            r.key: {
                "title": r.title,
                "seconds": r.seconds,
                "error": r.error,
                "data": r.data,
                "notes": r.notes,
                "plots": r.plots,
                "tables": [t.__dict__ for t in r.tables],
            }
            for r in results
        },
    }
    (out_dir / "latest.json").write_text(json.dumps(_clean(report), indent=2) + "\n")
    write_markdown(out_dir / "latest.md", report, results)


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks and write the report; exit 1 if one failed to run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (development)")
    parser.add_argument("--only", default="", help="comma-separated: " + ",".join(BENCHMARKS))
    parser.add_argument("--out", type=Path, default=None, help="where results go")
    parser.add_argument(
        "--merge", action="store_true", help="keep the other benchmarks' results in --out"
    )
    args = parser.parse_args(argv)
    _env()
    logging.basicConfig(level=logging.WARNING)
    keys = [k for k in args.only.split(",") if k] or list(BENCHMARKS)
    unknown = set(keys) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    quick_out = Path(tempfile.gettempdir()) / "tenantllm-bench-quick"
    out_dir = (args.out or (quick_out if args.quick else RESULTS_DIR)).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix="tenantllm-bench-"))
    final_dir = out_dir
    if args.merge:  # write the partial report aside, fold it into out_dir at the end
        out_dir = work_dir / "partial-results"
        out_dir.mkdir()
    started = time.perf_counter()
    machine = machine_info()
    ctx = BenchContext(quick=args.quick, work_dir=work_dir, out_dir=out_dir, model_dir=_model_dir())
    results: list[BenchResult] = []
    try:
        for key in keys:
            if key not in ENGINE_BENCHMARKS:
                ctx.stop_engine()  # an idle engine holds no CPU, but gigabytes of memory
            results.append(_run_one(key, ctx))
            # Written after every benchmark: an interrupted run keeps what it finished.
            _write(out_dir, started, args.quick, machine, keys, ctx, results)
        if args.merge:
            merge_results(final_dir, out_dir)
    finally:
        ctx.close()
        shutil.rmtree(work_dir, ignore_errors=True)
    print(f"[bench] wrote {final_dir / 'latest.md'}", flush=True)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
