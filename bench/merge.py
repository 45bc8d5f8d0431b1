"""Merge a partial run (`python -m bench.run --only KEYS --merge`) into the committed results.

The benchmarks of the partial run replace their earlier entries (JSON entry, targets and
markdown section); every other benchmark's results are kept as they were, and the report says
which benchmarks were re-run when, on which commit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from bench.common import targets_table

SUMMARY = "## Summary: "


def merge_results(out_dir: Path, partial_dir: Path) -> None:
    """Fold partial_dir's latest.{json,md} (and plots) into out_dir's."""
    old_json, new_json = out_dir / "latest.json", partial_dir / "latest.json"
    if not old_json.exists():  # nothing to merge with: the partial run is the report
        for item in partial_dir.iterdir():
            shutil.copy2(item, out_dir / item.name)
        return
    old, new = json.loads(old_json.read_text()), json.loads(new_json.read_text())
    titles = {key: entry["title"] for key, entry in new["benchmarks"].items()}
    merged = _merged_json(old, new)
    old_json.write_text(json.dumps(merged, indent=2) + "\n")
    md = _merged_markdown(
        (out_dir / "latest.md").read_text(),
        (partial_dir / "latest.md").read_text(),
        titles,
        merged["targets"],
    )
    (out_dir / "latest.md").write_text(md)
    for plot in partial_dir.glob("*.png"):
        shutil.copy2(plot, out_dir / plot.name)


def _merged_json(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    new_names = {t["name"] for t in new["targets"]}
    replaced = set(new["benchmarks"])
    # Old entries have no per-benchmark target list: a re-run's targets are known by name.
    kept = [t for t in old["targets"] if t["name"] not in new_names]
    merged = dict(old)
    merged["targets"] = kept + new["targets"]
    merged["benchmarks"] = {k: v for k, v in old["benchmarks"].items() if k not in replaced}
    for key, entry in new["benchmarks"].items():
        merged["benchmarks"][key] = {**entry, "targets": new["targets"]}
    merged["settings"] = {**old["settings"], "benchmarks": list(merged["benchmarks"])}
    merged.setdefault("merged_runs", []).append(
        {
            "benchmarks": sorted(replaced),
            "generated_at": new["generated_at"],
            "machine": new["machine"],
            "settings": new["settings"],
        }
    )
    return merged


def _sections(md: str) -> tuple[str, list[str]]:
    """The text before the summary, and the `## ` sections from the summary on."""
    head, _, rest = md.partition("\n" + SUMMARY)
    parts = (SUMMARY + rest).split("\n\n## ")
    return head, [parts[0]] + ["## " + p for p in parts[1:]]


def _merged_markdown(old: str, new: str, titles: dict[str, str], targets: list[Any]) -> str:
    head, old_sections = _sections(old)
    new_head, new_sections = _sections(new)
    fresh = {s.splitlines()[0][3:]: s for s in new_sections[1:]}
    body = [s for s in old_sections[1:] if s.splitlines()[0][3:] not in fresh]
    body += [fresh[t] for t in titles.values() if t in fresh]
    met = sum(bool(t["met"]) for t in targets)
    summary = f"{SUMMARY}{met} of {len(targets)} targets met\n\n{targets_table(targets)}"
    generated = next((x for x in new_head.splitlines() if x.startswith("Generated ")), "")
    note = f"Re-run later and merged in: {', '.join(titles.values())}. {generated}"
    return "\n\n".join([head.rstrip(), note, summary, *body]).rstrip() + "\n"
