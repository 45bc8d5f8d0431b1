"""The parse sandbox's fork server: started by `start_parser`, and its children start warm.

Each parse child re-runs the main script (Python 3.11 ignores a "__main__" preload, CPython
gh-137996). Run as `tenantllm` or app.py, that script imports core.cli; unless the fork server
already holds it, every uploaded file paid ~1 s of imports before being parsed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Stands in for the `tenantllm` entry point: module-level `from core.cli import main`.
ENTRY_POINT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    REPORT = Path(sys.argv[1] if __name__ == "__main__" else "{report}")
    ALREADY_IMPORTED = "core.cli" in sys.modules
    if __name__ == "__mp_main__":  # a parse child re-running this script
        with REPORT.open("a") as report:
            report.write(f"child found core.cli imported: {{ALREADY_IMPORTED}}\\n")

    from core.cli import main  # noqa: F401

    if __name__ == "__main__":
        import psutil

        from core.knowledge import parsing

        parsing.start_parser()
        servers = [
            p for p in psutil.Process().children()
            if "multiprocessing.forkserver" in " ".join(p.cmdline())
        ]
        print(f"fork servers: {{len(servers)}}")
        sample = REPORT.parent / "notes.txt"
        sample.write_text("Quarterly notes.")
        for _ in range(2):
            parts = parsing.parse_in_sandbox(sample, "text", "notes.txt", 60, 512)
            print(parts[0].text)
    """
)


def test_start_parser_starts_the_fork_server_and_children_start_warm(tmp_path: Path) -> None:
    report = tmp_path / "children.txt"
    script = tmp_path / "entry_point.py"
    script.write_text(ENTRY_POINT.format(report=report))
    done = subprocess.run(
        [sys.executable, str(script), str(report)],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == [
        "fork servers: 1",
        "Quarterly notes.",
        "Quarterly notes.",
    ]
    assert report.read_text().splitlines() == ["child found core.cli imported: True"] * 2
