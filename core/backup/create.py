"""`create_backup`: one archive of one install (database, data dir state, manifest).

The archive is written next to its final name and renamed into place when complete, so a
failed or interrupted backup never leaves a file that looks like a backup.
"""

from __future__ import annotations

import os
import sqlite3
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from core import crypto
from core.backup import archive, database, datafiles
from core.backup.manifest import KeySource, Manifest
from core.config import Settings
from core.db import utcnow
from core.errors import BackupError


def create_backup(settings: Settings, out: Path) -> Manifest:
    """Write the archive of the install `settings` describe to `out`; returns its manifest."""
    out = out.expanduser().absolute()
    _check_destination(settings, out)
    master, source = _master_key(settings)
    url = settings.resolved_database_url
    manifest = Manifest(
        tenantllm_version=_version(),
        created_at=utcnow().isoformat(),
        alembic_revision=None,
        database_backend=make_url(url).get_backend_name(),
        master_key_source=source,
    )
    partial = out.with_name(f".{out.name}.partial")
    try:
        with (
            tempfile.TemporaryDirectory(prefix="tenantllm-backup-") as work,
            archive.open_for_writing(partial) as tar,
        ):
            _add_database(tar, manifest, url, Path(work))
            _add_data_files(tar, manifest, settings, Path(work))
            manifest.sign(master)
            archive.add_manifest(tar, manifest)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return manifest


def _check_destination(settings: Settings, out: Path) -> None:
    if not settings.data_dir.is_dir():
        raise BackupError(f"There is no install at {settings.data_dir} (TENANTLLM_DATA_DIR).")
    if out.exists():
        raise BackupError(f"{out} exists already: give a new file name (nothing was written).")
    if not out.parent.is_dir():
        raise BackupError(f"{out.parent} is not a directory.")
    if out.resolve().is_relative_to(settings.data_dir.resolve()):
        raise BackupError("The archive cannot be written inside the data dir it backs up.")


def _master_key(settings: Settings) -> tuple[bytes, KeySource]:
    """The key the originals are encrypted with, and where a restore will find it."""
    if settings.master_key:
        return settings.master_key.encode("utf-8"), "setting"
    # Development: the random key under the data dir (created now if this install has
    # none yet); it is one of the data dir's files, so the archive carries it.
    return crypto.master_key(settings), "data_dir_file"


def _version() -> str:
    try:
        return metadata.version("tenantllm")
    except metadata.PackageNotFoundError:
        return "unknown"


def _add_database(tar: tarfile.TarFile, manifest: Manifest, url: str, work: Path) -> None:
    """Dump every table from one consistent snapshot into the archive, in load order."""
    source_url = url
    try:
        live = database.sqlite_path(url)
        if live is not None:
            if not live.exists():
                raise BackupError(f"The database {live} does not exist: nothing to back up.")
            snapshot = work / "snapshot.db"
            database.snapshot_sqlite(live, snapshot)
            source_url = f"sqlite:///{snapshot}"
        engine = database.open_for_dump(source_url)
        try:
            with engine.connect() as conn, conn.begin():
                manifest.alembic_revision = database.current_revision(conn)
                for table in database.reflected_tables(conn):
                    dump = work / f"{table.name}.jsonl"
                    with dump.open("wb") as handle:
                        manifest.table_rows[table.name] = database.dump_table(conn, table, handle)
                    archive.add_file(tar, manifest, f"{archive.DATABASE_PREFIX}{dump.name}", dump)
                    dump.unlink()
        finally:
            engine.dispose()
    except (SQLAlchemyError, sqlite3.Error) as exc:
        shown = make_url(url).render_as_string(hide_password=True)
        raise BackupError(f"Cannot read the database at {shown}: {exc}") from None


def _add_data_files(
    tar: tarfile.TarFile, manifest: Manifest, settings: Settings, work: Path
) -> None:
    """Copy each state file of the data dir privately (consistently), then archive the copy."""
    copy = work / "copy"
    for path, relative in datafiles.state_files(
        settings.data_dir, database.sqlite_path(settings.resolved_database_url)
    ):
        try:
            datafiles.copy_consistently(path, copy)
        except FileNotFoundError:
            continue  # deleted while we walked (a parser's temp file, a removed document)
        except (OSError, sqlite3.Error) as exc:
            raise BackupError(f"Cannot copy {path}: {exc}") from None
        archive.add_file(tar, manifest, f"{archive.FILES_PREFIX}{relative}", copy)
        copy.unlink()
