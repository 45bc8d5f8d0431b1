"""`restore_backup`: an archive into an empty data dir and an empty database, or nothing.

Order, so that a refusal or a failure leaves the target as it was:
1. read the whole archive once: every member's sha256 against the manifest, the manifest's
   MAC against the master key (core/backup/manifest.py), the schema revision known here;
2. refuse unless the data dir is empty (or absent) and the database has no rows;
3. write the files into a staging dir beside the data dir and load the rows in one
   transaction (checksums checked again while writing: the file may change under us);
   the data dir's SQLite file, if that is the database, is built in the staging dir too;
4. migrate to the newest schema, move the staged files into the data dir, and move the
   originals into the store this install's settings choose (core/backup/originals.py);
5. verify the audit chain of the restored database, and audit the restore itself.
A failure in 3-4 removes the staging dir and what was loaded into an external database.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from sqlalchemy import Table
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import SQLAlchemyError

from core.audit.chain import ChainReport
from core.backup import archive, database
from core.backup.chain import verify_and_record
from core.backup.manifest import Manifest
from core.backup.originals import Adopted, adopt_originals
from core.config import Settings
from core.datadir import secure_data_dir
from core.db import dispose_engines, get_engine, upgrade_database
from core.errors import BackupError

if TYPE_CHECKING:
    from hashlib import _Hash as Hash

MASTER_KEY_MEMBER = archive.FILES_PREFIX + "master.key"


@dataclass
class RestoreReport:
    """What was restored, and the verdict on the restored audit chain."""

    manifest: Manifest
    chain: ChainReport
    files: int = 0
    originals: Adopted = field(default_factory=lambda: Adopted(0, 0))
    table_rows: dict[str, int] = field(default_factory=dict)


@dataclass
class _Target:
    data_dir: Path
    url: str  # the database the install will use
    db_in_data_dir: Path | None  # its path relative to data_dir, when it is the data dir's file
    had_tables: bool = False


def restore_backup(settings: Settings, path: Path) -> RestoreReport:
    """Restore `path` into the (empty) install `settings` describe."""
    path = path.expanduser().absolute()
    manifest, small = archive.read_and_check(path)
    _check_key(settings, manifest, small.get(MASTER_KEY_MEMBER))
    _check_revision(manifest)
    target = _target(settings)
    _check_empty(target, manifest)
    target.data_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{target.data_dir.name}.restoring-", dir=target.data_dir.parent)
    )
    load_url = target.url
    if target.db_in_data_dir is not None:
        load_url = f"sqlite:///{staging / target.db_in_data_dir}"
    report = RestoreReport(manifest, ChainReport(False, 0, None, "", "not checked"))
    try:
        try:
            _load(path, manifest, staging, load_url, report)
            upgrade_database(load_url)  # the archive's revision -> the newest
        except (SQLAlchemyError, ValueError, KeyError, TypeError) as exc:
            # Checksums matched, so the archive is as written: rows this schema refuses.
            raise BackupError(
                f"The backup's rows could not be loaded ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); nothing was kept."
            ) from None
        dispose_engines()  # the staged SQLite file is closed before it moves
        _move_into_place(staging, target.data_dir)
    except BaseException:
        dispose_engines()
        shutil.rmtree(staging, ignore_errors=True)
        if target.db_in_data_dir is None:
            database.wipe(get_engine(target.url), keep_tables=target.had_tables)
        raise
    # An archive of a SQLite install restored onto PostgreSQL (or back) brings its originals
    # in the other store: move them where this install's settings keep them.
    report.originals = adopt_originals(settings)
    detail = f"cli restore {path.name} (created {manifest.created_at})"
    report.chain = verify_and_record(settings, "backup_restore", detail)
    return report


def _check_key(settings: Settings, manifest: Manifest, archived_key: bytes | None) -> None:
    """The restored install must open the originals: same key, and an unaltered manifest."""
    if manifest.master_key_source == "setting":
        if not settings.master_key:
            raise BackupError(
                "The backed-up install encrypted its documents with TENANTLLM_MASTER_KEY, "
                "which a backup never contains: set the same TENANTLLM_MASTER_KEY and restore "
                "again (nothing was written)."
            )
        if not manifest.signed_by(settings.master_key.encode("utf-8")):
            raise BackupError(
                "The archive does not verify with this TENANTLLM_MASTER_KEY: it is not the "
                "backed-up install's key, or the archive was altered (nothing was written)."
            )
        return
    if archived_key is None:
        raise BackupError("The archive lacks the master.key its manifest names (cut short?).")
    if settings.master_key:
        raise BackupError(
            "This backup carries its own development key (master.key): unset "
            "TENANTLLM_MASTER_KEY to restore it, or the documents would not decrypt."
        )
    if not manifest.signed_by(archived_key.strip()):
        raise BackupError("The archive's manifest does not match its content: it was altered.")


def _check_revision(manifest: Manifest) -> None:
    revision = manifest.alembic_revision
    if revision is not None and not database.known_revision(revision):
        raise BackupError(
            f"The backup is at database migration {revision}, which this version of tenantllm "
            f"does not know (made by a newer version? this one is {manifest.tenantllm_version})."
        )


def _target(settings: Settings) -> _Target:
    data_dir = settings.data_dir.expanduser().absolute()
    url = settings.resolved_database_url
    file = database.sqlite_path(url)
    inside = None
    if file is not None and file.absolute().is_relative_to(data_dir):
        inside = file.absolute().relative_to(data_dir)
    return _Target(data_dir, url, inside)


def _check_empty(target: _Target, manifest: Manifest) -> None:
    """Refuse unless the data dir is empty and the database holds no row."""
    if target.data_dir.exists() and any(target.data_dir.iterdir()):
        raise BackupError(
            f"The data dir {target.data_dir} is not empty: restore only into an empty (or new) "
            "data dir (nothing was written)."
        )
    if target.db_in_data_dir is not None:
        return  # the data dir's own SQLite file: absent, since the dir is empty
    shown = make_url(target.url).render_as_string(hide_password=True)
    try:
        with get_engine(target.url).connect() as conn:
            counts = database.row_counts(conn)
            revision = database.current_revision(conn)
    except SQLAlchemyError as exc:
        raise BackupError(f"Cannot reach the database at {shown}: {exc}") from None
    busy = {name: rows for name, rows in counts.items() if rows}
    if busy:
        raise BackupError(
            f"The database at {shown} is not empty ({', '.join(sorted(busy))} have rows): "
            "restore only into an empty database (nothing was written)."
        )
    if revision is not None and revision != manifest.alembic_revision:
        raise BackupError(
            f"The empty database at {shown} is at migration {revision}, the backup at "
            f"{manifest.alembic_revision}: restore into a database without tables."
        )
    target.had_tables = bool(counts)


def _load(path: Path, manifest: Manifest, staging: Path, url: str, report: RestoreReport) -> None:
    """Write every member (files into `staging`, rows into `url`), checking each checksum."""
    if manifest.alembic_revision is not None:
        upgrade_database(url, manifest.alembic_revision)
    with get_engine(url).begin() as conn, archive.reading(path):
        tables = {t.name: t for t in database.reflected_tables(conn)}
        for info, handle in archive.members(path):
            if info.name == archive.MANIFEST_NAME:
                continue
            expected = manifest.members.get(info.name)
            if expected is None:
                raise BackupError(f"{path} changed during the restore ({info.name}).")
            digest = hashlib.sha256()
            if info.name.startswith(archive.DATABASE_PREFIX):
                name = info.name.removeprefix(archive.DATABASE_PREFIX).removesuffix(".jsonl")
                report.table_rows[name] = _load_table(conn, tables, name, handle, digest)
            else:
                _write_file(archive.target_path(staging, info.name), handle, digest)
                report.files += 1
            if digest.hexdigest() != expected.sha256:
                raise BackupError(f"{path} changed during the restore ({info.name}).")
        database.advance_sequences(conn, tables.values())
    if report.table_rows != manifest.table_rows:
        raise BackupError("The restored row counts differ from the manifest's.")


def _load_table(
    conn: Connection, tables: dict[str, Table], name: str, handle: IO[bytes], digest: Hash
) -> int:
    table = tables.get(name)
    if table is None:
        raise BackupError(f"The backup has a table {name!r} that its schema revision lacks.")
    return database.insert_rows(conn, table, database.decode_rows(table, _hashed(handle, digest)))


def _hashed(handle: IO[bytes], digest: Hash) -> Iterator[bytes]:
    for line in handle:
        digest.update(line)
        yield line


def _write_file(target: Path, handle: IO[bytes], digest: Hash) -> None:
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        while chunk := handle.read(archive.CHUNK):
            digest.update(chunk)
            out.write(chunk)


def _move_into_place(staging: Path, data_dir: Path) -> None:
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for entry in staging.iterdir():
        os.replace(entry, data_dir / entry.name)
    staging.rmdir()
    secure_data_dir(data_dir)
