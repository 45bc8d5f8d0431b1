"""Files at rest (issue 12, item 7): nothing of the data dir is readable by other local users.

The data dir holds the SQLite file (audit log, key hashes, sessions), the Chroma stores (chunk
text in clear), the encrypted originals with the development master key, and Gradio's temp
dir (uploads before ingestion). After the real app ran, every dir under it must be 0700 and
every file 0600 (no group or other bits), and Gradio's uploads must land inside it.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.fixtures.common import REPO
from tests.ui_helpers import make_user, signed_in_client

OPEN_BITS = stat.S_IRWXG | stat.S_IRWXO


def open_entries(root: Path, skip: frozenset[Path] = frozenset()) -> list[str]:
    """Every entry under `root` (and `root` itself) that group or others may access."""
    found = []
    paths = [root]
    for dirpath, dirs, files in os.walk(root):
        paths += [Path(dirpath) / name for name in [*dirs, *files]]
    for path in paths:
        mode = path.lstat().st_mode
        if path in skip or stat.S_ISLNK(mode):
            continue
        if mode & OPEN_BITS:
            found.append(f"{path.relative_to(root.parent)} {stat.filemode(mode)}")
    return found


def _upload_to_gradio(base_url: str, issuer: str) -> Path:
    """Upload one file through Gradio's own route as an editor; where Gradio put it."""
    sub = make_user(issuer, ["sales-editors"], prefix="modes")
    with signed_in_client(base_url, sub) as client:
        answer = client.post(
            "/gradio_api/upload", files={"files": ("modes.txt", b"private words of sales\n")}
        )
        assert answer.status_code == 200, answer.text[:300]
        [path] = answer.json()
    return Path(path)


def test_data_dir_of_the_running_app_is_owner_only(app_server) -> None:
    """Database, stores, originals, master key and Gradio's uploads: 0700 dirs, 0600 files."""
    data_dir = app_server.data_dir.resolve()
    upload = _upload_to_gradio(app_server.base_url, app_server.issuer)
    # What the app must have written by now (demo documents ingested before /readyz).
    for expected in ("tenantllm.db", "master.key", "tenants/sales/chroma", "tenants/sales/files"):
        assert (data_dir / expected).exists(), expected
    assert upload.resolve().is_relative_to(data_dir), f"Gradio's temp dir is {upload.parent}"
    assert upload.exists(), upload
    # server.log is written by the test fixture (this process), not by the app.
    problems = open_entries(data_dir, skip=frozenset({app_server.log_path.resolve()}))
    assert problems == [], "readable by group/others:\n" + "\n".join(problems)


def test_cli_tightens_a_data_dir_left_open(tmp_path: Path) -> None:
    """An older install's world-readable data dir is made owner-only by the next command."""
    data_dir = tmp_path / "open-data"
    (data_dir / "tenants" / "sales").mkdir(parents=True)
    (data_dir / "tenants" / "sales" / "old-notes.txt").write_text("chunk text in clear\n")
    for path in (data_dir, data_dir / "tenants", data_dir / "tenants" / "sales"):
        path.chmod(0o755)
    (data_dir / "tenants" / "sales" / "old-notes.txt").chmod(0o644)
    env = {**os.environ, "TENANTLLM_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "core.cli", "docs", "--tenant", "sales"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (data_dir / "tenantllm.db").exists()  # the command really used this data dir
    problems = open_entries(data_dir)
    assert problems == [], "readable by group/others:\n" + "\n".join(problems)
