"""The archive file itself: a tar.gz whose member names and checksums the manifest lists.

    database/<table>.jsonl   one table's rows (core/backup/database.py), in load order
    files/<path>             a data dir file, at its path relative to the data dir
    manifest.json            written last, when every checksum is known

Reading never uses tarfile's extraction: restore writes each member itself, to a path taken
from the manifest and checked to stay inside the target, and only regular files are read.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO

from core.backup.manifest import MANIFEST_NAME, Manifest, Member, parse_manifest
from core.errors import BackupError

DATABASE_PREFIX = "database/"
FILES_PREFIX = "files/"
CHUNK = 1 << 20


def open_for_writing(path: Path) -> tarfile.TarFile:
    """A new gzip'ed tar at `path`, created owner-only (it holds every team's data)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    return tarfile.open(fileobj=os.fdopen(fd, "wb"), mode="w:gz")


def add_file(tar: tarfile.TarFile, manifest: Manifest, name: str, path: Path) -> None:
    """Add a private copy (not a live file: its size must not change) under `name`."""
    digest = sha256_of(path)
    info = _info(name, path.stat().st_size)
    with path.open("rb") as handle:
        tar.addfile(info, handle)
    manifest.members[name] = Member(digest, info.size)


def add_manifest(tar: tarfile.TarFile, manifest: Manifest) -> None:
    """Add the (signed) manifest as the last member."""
    raw = manifest.to_json()
    tar.addfile(_info(MANIFEST_NAME, len(raw)), io.BytesIO(raw))


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o600, int(time.time())
    return info


def sha256_of(path: Path) -> str:
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_and_check(path: Path) -> tuple[Manifest, dict[str, bytes]]:
    """Pass 1: the manifest, with every member's checksum checked; writes nothing.

    Also returns the content of `files/master.key` if present (the key check needs it).
    """
    seen: dict[str, tuple[str, int]] = {}
    manifest_raw: bytes | None = None
    small: dict[str, bytes] = {}
    with reading(path):
        for info, handle in members(path):
            if info.name == MANIFEST_NAME:
                manifest_raw = handle.read()
            elif info.name == FILES_PREFIX + "master.key":
                small[info.name] = handle.read()
                seen[info.name] = (hashlib.sha256(small[info.name]).hexdigest(), info.size)
            else:
                seen[info.name] = (_stream_digest(handle), info.size)
    if manifest_raw is None:
        raise BackupError(f"{path} has no manifest: not a tenantllm backup, or cut short.")
    manifest = parse_manifest(manifest_raw)
    listed = {name: (m.sha256, m.size) for name, m in manifest.members.items()}
    if listed != seen:
        raise BackupError(f"{path} does not match its manifest: {_difference(listed, seen)}.")
    return manifest, small


def _difference(listed: dict[str, tuple[str, int]], seen: dict[str, tuple[str, int]]) -> str:
    missing = sorted(set(listed) - set(seen))
    extra = sorted(set(seen) - set(listed))
    changed = sorted(n for n in set(listed) & set(seen) if listed[n] != seen[n])
    kinds = (("missing", missing), ("not listed", extra), ("altered", changed))
    parts = [f"{label} {names[:3]}" for label, names in kinds if names]
    return "; ".join(parts)


def _stream_digest(handle: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while chunk := handle.read(CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn a damaged archive's errors (while listing or reading members) into BackupError."""
    try:
        yield
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise BackupError(f"{path} is not a readable backup archive: {exc}") from None


def members(path: Path) -> Iterator[tuple[tarfile.TarInfo, IO[bytes]]]:
    """Each regular-file member with a reader (read it inside `reading(path)`).

    BackupError for any other kind of entry, or a name outside the layout.
    """
    with reading(path), tarfile.open(path, mode="r:gz") as tar:
        for info in tar:
            if not info.isreg() or not _safe_name(info.name):
                raise BackupError(f"{path} holds an unexpected entry {info.name!r}.")
            handle = tar.extractfile(info)
            if handle is None:  # pragma: no cover - isreg() members always have one
                raise BackupError(f"{path}: member {info.name!r} cannot be read.")
            yield info, handle


def _safe_name(name: str) -> bool:
    if name == MANIFEST_NAME:
        return True
    parts = PurePosixPath(name).parts
    return (
        name.startswith((DATABASE_PREFIX, FILES_PREFIX))
        and not name.startswith("/")
        and len(parts) >= 2
        and all(p not in ("", ".", "..") for p in parts)
        and "\\" not in name
    )


def target_path(root: Path, name: str) -> Path:
    """Where `files/<path>` is written under `root` (refuses any path leaving it)."""
    relative = PurePosixPath(name.removeprefix(FILES_PREFIX))
    target = (root / Path(*relative.parts)).resolve()
    if not target.is_relative_to(root.resolve()):
        raise BackupError(f"Archive member {name!r} would be written outside the data dir.")
    return target
