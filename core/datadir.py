"""The data dir is private to the account that runs tenantllm: dirs 0700, files 0600.

It holds the SQLite file (audit log, API key hashes, sessions), the Chroma stores (chunk text
in clear), the encrypted originals with the development master key next to them, and
Gradio's temp dir (uploads before ingestion). Any other local user who can read it reads every
team's documents, so: the process umask is 077 (everything created afterwards is private),
the dir is created 0700, and a dir left too open by an older version is tightened at start.
Gradio's temp dir is moved under it, since its default (`/tmp/gradio`) is world-readable.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077
GRADIO_TEMP_SUBDIR = Path("tmp") / "gradio"
_OPEN_BITS = stat.S_IRWXG | stat.S_IRWXO


def restrict_umask() -> None:
    """From now on, files this process creates are 0600 and dirs 0700."""
    os.umask(PRIVATE_UMASK)


def secure_data_dir(data_dir: Path) -> int:
    """Create `data_dir` 0700, or tighten it and everything in it; returns entries tightened.

    Idempotent and cheap (one stat per entry). Symlinks are left alone: chmod would follow
    them to a file that is not ours to change.
    """
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    tightened = int(_tighten(data_dir))
    for root, dirs, files in os.walk(data_dir):
        for name in [*dirs, *files]:
            tightened += _tighten(Path(root) / name)
    if tightened:
        log.warning("tightened %d entries of %s to owner-only access", tightened, data_dir)
    return tightened


def _tighten(path: Path) -> bool:
    try:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode) or not mode & _OPEN_BITS:
            return False
        path.chmod(stat.S_IMODE(mode) & ~_OPEN_BITS)
        return True
    except OSError as exc:  # not ours (or gone): say so, never stop the start for it
        log.warning("could not make %s owner-only: %s", path, exc.strerror or exc)
        return False


def use_private_gradio_temp(data_dir: Path) -> Path:
    """Point Gradio's temp dir (GRADIO_TEMP_DIR) into the data dir; returns it.

    Must run before gradio is imported: gradio reads the variable at import time. An
    operator's own GRADIO_TEMP_DIR is kept, but made owner-only as well.
    """
    configured = os.environ.get("GRADIO_TEMP_DIR")
    temp_dir = Path(configured) if configured else data_dir.resolve() / GRADIO_TEMP_SUBDIR
    temp_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _tighten(temp_dir)
    os.environ["GRADIO_TEMP_DIR"] = str(temp_dir)
    return temp_dir


def prepare_private_data_dir(data_dir: Path) -> None:
    """What `tenantllm serve` does before building the app: a private data dir and temp dir."""
    secure_data_dir(data_dir)
    use_private_gradio_temp(data_dir)


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` held for the block (released if the process dies).

    What the one-time model conversions under data/models/ hold, so that two processes
    starting at once convert once.
    """
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
