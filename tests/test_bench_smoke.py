"""The benchmark harness's pure parts: statistics, targets, tables, the report writer.

No timing is asserted anywhere: these check the arithmetic and the report format that
`make bench` relies on, with made-up numbers.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import math
from pathlib import Path

import pytest

from bench.common import (
    BenchResult,
    RequestStats,
    Table,
    closed_loop,
    markdown_table,
    percentile,
    ratio,
    round_sig,
    summarize,
    target,
    targets_table,
)


def test_percentile_interpolates_like_numpy():
    values = [10, 1, 4, 3, 2, 5, 6, 9, 8, 7]
    assert percentile(values, 0) == 1
    assert percentile(values, 100) == 10
    assert percentile(values, 50) == pytest.approx(5.5)
    assert percentile(values, 95) == pytest.approx(9.55)
    assert percentile([42], 99) == 42


def test_percentile_of_nothing_is_nan_and_bad_q_is_refused():
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1, 2], 101)


def test_summarize_and_ratio():
    stats = summarize([1.0, 2.0, 3.0, 4.0])
    assert stats["n"] == 4 and stats["mean"] == 2.5 and stats["p50"] == 2.5
    assert math.isnan(summarize([])["p95"])
    assert ratio(3.0, 2.0) == 1.5
    assert math.isnan(ratio(1.0, 0.0))
    assert math.isnan(ratio(float("nan"), 2.0))


@pytest.mark.parametrize(
    ("op", "value", "bound", "met"),
    [
        (">=", 0.95, 0.95, True),
        (">=", 0.94, 0.95, False),
        ("<=", 15.0, 15, True),
        ("<=", 15.1, 15, False),
        (">", 1.0, 1.0, False),
        ("<", 0.49, 0.5, True),
    ],
)
def test_target_bound_text_and_met(op, value, bound, met):
    t = target("x", value, "ms", op, bound)
    assert t == {
        "name": "x",
        "value": round_sig(value),
        "unit": "ms",
        "target": f"{op} {t['target'].split(' ', 1)[1]}",
        "met": met,
    }
    assert t["target"].startswith(op + " ")
    json.dumps(t)  # JSON-ready as is


def test_target_not_measured_is_never_met_and_is_json_null():
    t = target("missing", float("nan"), "x", ">=", 0.0)
    assert t["met"] is False and t["value"] is None


def test_target_refuses_unknown_operator():
    with pytest.raises(ValueError):
        target("x", 1.0, "x", "==", 1.0)


def test_round_sig_keeps_significant_digits():
    assert round_sig(1234.5678) == 1235
    assert round_sig(0.00012346) == 0.0001235
    assert round_sig(0.0) == 0.0
    assert round_sig(float("inf")) is None


def test_tables_render_markdown():
    text = markdown_table(["a", "b|c"], [[1234.5, True], ["x|y", None]])
    lines = text.splitlines()
    assert lines[0] == "| a | b\\|c |"
    assert lines[1] == "|---|---|"
    assert lines[2] == "| 1,234 | yes |"
    assert lines[3] == "| x\\|y | n/a |"
    summary = targets_table([target("t", 0.5, "x", ">=", 0.95)])
    assert "| t | 0.5 | x | >= 0.95 | **no** |" in summary


def test_closed_loop_runs_every_request_within_the_concurrency():
    in_flight, peak, seen = 0, 0, []

    async def call(i: int) -> RequestStats:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0)
        seen.append(i)
        in_flight -= 1
        return RequestStats(ttft=0.001, tokens=10, latency=0.002)

    result = asyncio.run(closed_loop(call, 10, 3))
    assert sorted(seen) == list(range(10))
    assert peak <= 3
    assert sum(r.tokens for r in result.requests) == 100
    assert result.ttft_ms() == [pytest.approx(1.0)] * 10


def test_report_writer_puts_every_target_in_json_and_markdown(tmp_path):
    from bench.run import _clean, write_markdown

    result = BenchResult("demo", "Demo benchmark", seconds=1.0)
    result.tables.append(Table("caption", ["k", "v"], [["a", 1.0]]))
    result.targets.append(target("demo ratio", 0.97, "x", ">=", 0.95))
    result.targets.append(target("demo latency", float("nan"), "ms", "<=", 15))
    report = {
        "generated_at": "2026-01-01T00:00:00Z",
        "duration_s": 1.0,
        "quick": True,
        "machine": {
            "cpu": "cpu",
            "logical_cores": 2,
            "memory_gib": 1,
            "os": "os",
            "python": "3.11",
            "git_commit": "abc",
            "load_average_at_start": [0, 0, 0],
            "versions": {"vllm": "0"},
        },
        "targets": result.targets,
    }
    write_markdown(tmp_path / "latest.md", report, [result])
    text = (tmp_path / "latest.md").read_text()
    assert "## Summary: 1 of 2 targets met" in text
    assert "| demo latency | n/a | ms | <= 15.0 | **no** |" in text
    data = json.loads(json.dumps(_clean({"targets": result.targets, "x": float("nan")})))
    assert [t["name"] for t in data["targets"]] == ["demo ratio", "demo latency"]
    assert all(set(t) == {"name", "value", "unit", "target", "met"} for t in data["targets"])
    assert data["x"] is None


def test_merge_keeps_other_benchmarks_and_replaces_the_rerun(tmp_path):
    from bench.merge import merge_results
    from bench.run import write_markdown

    def report_of(results, when):
        machine = {
            "cpu": "cpu",
            "logical_cores": 2,
            "memory_gib": 1,
            "os": "os",
            "python": "3.11",
            "git_commit": when,
            "load_average_at_start": [0, 0, 0],
            "versions": {},
        }
        targets = [t for r in results for t in r.targets]
        benchmarks = {
            r.key: {"title": r.title, "data": r.data, "tables": [], "notes": []} for r in results
        }
        return {
            "generated_at": when,
            "duration_s": 1.0,
            "quick": False,
            "machine": machine,
            "settings": {"benchmarks": list(benchmarks)},
            "targets": targets,
            "benchmarks": benchmarks,
        }

    def write(folder, results, when):
        folder.mkdir()
        report = report_of(results, when)
        (folder / "latest.json").write_text(json.dumps(report))
        write_markdown(folder / "latest.md", report, results)

    a, b = BenchResult("a", "1. A"), BenchResult("b", "2. B")
    a.targets.append(target("a ratio", 1.0, "x", ">=", 0.9))
    b.targets.append(target("b old", 1.0, "x", ">=", 2.0))
    write(tmp_path / "full", [a, b], "old")
    b2 = BenchResult("b", "2. B", data={"fresh": True})
    b2.targets.append(target("b old", 3.0, "x", ">=", 2.0))
    write(tmp_path / "partial", [b2], "new")
    merge_results(tmp_path / "full", tmp_path / "partial")
    merged = json.loads((tmp_path / "full" / "latest.json").read_text())
    assert [t["name"] for t in merged["targets"]] == ["a ratio", "b old"]
    assert [t["met"] for t in merged["targets"]] == [True, True]
    assert merged["benchmarks"]["b"]["data"] == {"fresh": True}
    assert merged["merged_runs"][0]["benchmarks"] == ["b"]
    text = (tmp_path / "full" / "latest.md").read_text()
    assert "## Summary: 2 of 2 targets met" in text
    assert text.count("## 1. A") == 1 and text.count("## 2. B") == 1
    assert "Generated old" in text and "Re-run later and merged in: 2. B" in text


@pytest.mark.parametrize(
    "module",
    sorted(p.stem for p in Path(__file__).resolve().parents[1].joinpath("bench").glob("*.py")),
)
def test_every_benchmark_module_imports(module):
    """The benchmarks import core lazily; their own imports must still resolve after moves."""
    importlib.import_module(f"bench.{module}")
