"""Which files of the data dir a backup holds, and how each is copied consistently.

Everything under the data dir is state unless listed here as scratch or derived, so state
added later (a new store, SIEM cursors, adapters under `adapters/`) is backed up without a
change here. Left out:
- `tmp/` (Gradio's uploads before ingestion) and each team's `tenants/<id>/tmp/` (parser
  copies): scratch, deleted by their owners anyway;
- `models/`: the converted bundled model, rebuilt from the installed package on first start;
- the SQL database file when it is the data dir's SQLite file: it travels as a logical dump
  (core/backup/database.py);
- SQLite side files (`-wal`, `-shm`, `-journal`): their content is in the snapshot;
- anything that is not a regular file (symlinks are not followed: they could point out of
  the data dir).
Every other SQLite file (a team's `chroma.sqlite3`) is copied with the online backup API, so a
running server's writes cannot tear it; other files (Chroma's segment files, BM25 indexes,
encrypted originals) are copied as they are. Writes landing during a backup may be missed by
those (at most the uploads of that moment): pause uploads for a strictly consistent copy.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from core.backup.database import snapshot_sqlite

SKIPPED_TOP = frozenset({"tmp", "models"})
SQLITE_MAGIC = b"SQLite format 3\x00"
SQLITE_SIDE_SUFFIXES = ("-wal", "-shm", "-journal")


def state_files(data_dir: Path, database_file: Path | None) -> Iterator[tuple[Path, str]]:
    """(file, its path relative to data_dir in POSIX form) of every file to back up, sorted."""
    skip_db = database_file.resolve() if database_file else None
    for root, dirs, files in os.walk(data_dir):
        here = Path(root)
        relative_dir = here.relative_to(data_dir)
        dirs[:] = sorted(d for d in dirs if not _skipped_dir(relative_dir / d))
        for name in sorted(files):
            path = here / name
            if not stat.S_ISREG(path.lstat().st_mode) or name.endswith(SQLITE_SIDE_SUFFIXES):
                continue
            if skip_db is not None and path.resolve() == skip_db:
                continue
            yield path, PurePosixPath(*(relative_dir / name).parts).as_posix()


def _skipped_dir(relative: Path) -> bool:
    parts = relative.parts
    if len(parts) == 1 and parts[0] in SKIPPED_TOP:
        return True
    # tenants/<id>/tmp: a team's parser scratch
    return len(parts) == 3 and parts[0] == "tenants" and parts[2] == "tmp"


def copy_consistently(source: Path, target: Path) -> None:
    """Copy one state file: SQLite files through the backup API, the rest byte for byte."""
    if is_sqlite_file(source):
        snapshot_sqlite(source, target)
    else:
        shutil.copyfile(source, target)


def is_sqlite_file(path: Path) -> bool:
    """True when the file starts with SQLite's header."""
    with path.open("rb") as handle:
        return handle.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
