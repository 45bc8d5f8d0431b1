"""`migrate_install`: an embedded install onto the scale-out services, without losing a row.

The source is the install the settings describe today (typically SQLite and a local Chroma
store per team); the target is the same install on other services (PostgreSQL, a Chroma
server). Steps, in order:
1. the database: every table (found by reflection, so also later migrations' tables) copied
   in foreign-key order into an empty target database in one transaction, values converted
   the way a backup's restore converts them, row counts compared table by table;
2. the encrypted originals into the target's original store (the database, with PostgreSQL:
   core/backup/originals.py), so that every replica can re-index every team;
3. with a Chroma server in the target settings, each team's vectors from its embedded store
   into its own database on the server (core/backup/vectors.py);
4. the audit chain verified on the target, and the migration itself appended to it.

The source is only read, so a failed migration leaves the install as it was, and the target
database is wiped of what was loaded: fix the cause and run it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import SQLAlchemyError

from core.audit.chain import ChainReport
from core.backup import database
from core.backup.chain import verify_and_record
from core.backup.originals import Adopted, adopt_originals
from core.backup.vectors import copy_vectors
from core.config import Settings
from core.db import get_engine, upgrade_database
from core.errors import BackupError
from core.plugins import load_tenants


@dataclass
class MigrationReport:
    """What was moved, and the verdict on the target's audit chain."""

    table_rows: dict[str, int] = field(default_factory=dict)
    originals: Adopted = field(default_factory=lambda: Adopted(0, 0))
    vectors: dict[str, int] = field(default_factory=dict)  # per team
    chain: ChainReport | None = None


def migrate_install(source: Settings, target: Settings) -> MigrationReport:
    """Copy the install `source` describes onto the services `target` describes."""
    source_url, target_url = source.resolved_database_url, target.resolved_database_url
    if make_url(source_url) == make_url(target_url):
        raise BackupError("The target database is the install's own database: nothing to do.")
    upgrade_database(source_url)  # both sides at the newest schema: the tables match
    keep_tables = _require_empty(target_url)
    report = MigrationReport()
    try:
        upgrade_database(target_url)
        report.table_rows = _copy_database(source_url, target_url)
        report.originals = adopt_originals(target)
        report.vectors = copy_vectors(source, target, load_tenants(source))
    except BaseException:
        database.wipe(get_engine(target_url), keep_tables=keep_tables)
        raise
    detail = f"cli migrate from {make_url(source_url).get_backend_name()}"
    report.chain = verify_and_record(target, "install_migrate", detail)
    return report


def _require_empty(url: str) -> bool:
    """Refuse a target database with rows; True when it has (empty) tables already."""
    shown = make_url(url).render_as_string(hide_password=True)
    try:
        with get_engine(url).connect() as conn:
            counts = database.row_counts(conn)
    except SQLAlchemyError as exc:
        raise BackupError(f"Cannot reach the target database at {shown}: {exc}") from None
    busy = sorted(name for name, rows in counts.items() if rows)
    if busy:
        raise BackupError(
            f"The target database at {shown} is not empty ({', '.join(busy)} have rows): "
            "migrate only into an empty database (nothing was written)."
        )
    return bool(counts)


def _copy_database(source_url: str, target_url: str) -> dict[str, int]:
    """Every row of the source into the target, in one snapshot and one transaction."""
    reader = database.open_for_dump(source_url)
    try:
        with reader.connect() as src, get_engine(target_url).begin() as dst:
            tables = {t.name: t for t in database.reflected_tables(dst)}
            copied: dict[str, int] = {}
            for table in database.reflected_tables(src):
                into = tables.get(table.name)
                if into is None:
                    raise BackupError(f"The target schema lacks table {table.name!r}.")
                rows = database.read_rows(src, table)
                converted = (database.convert_row(into, dict(row)) for row in rows)
                copied[table.name] = database.insert_rows(dst, into, converted)
            database.advance_sequences(dst, tables.values())
            _check_counts(dst, copied)
    finally:
        reader.dispose()
    return copied


def _check_counts(dst: Connection, copied: dict[str, int]) -> None:
    landed = database.row_counts(dst)
    differ = sorted(name for name, rows in copied.items() if landed.get(name) != rows)
    if differ:
        raise BackupError(f"Row counts differ after the copy ({', '.join(differ)}): undone.")
