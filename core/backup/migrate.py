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

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import SQLAlchemyError

from core.audit.auditor import AuditEvent, Auditor
from core.audit.chain import ChainReport
from core.backup import database
from core.backup.originals import Adopted, adopt_originals
from core.backup.vectors import copy_vectors
from core.config import Settings
from core.db import get_engine, upgrade_database
from core.errors import BackupError
from core.plugins import load_tenants
from core.rbac import operator_principal


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
    if _same_database(source_url, target_url):
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
    report.chain = _verify_and_audit(target, source_url)
    return report


def _same_database(a: str, b: str) -> bool:
    return make_url(a).render_as_string(hide_password=True) == make_url(b).render_as_string(
        hide_password=True
    )


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
                copied[table.name] = database.insert_rows(dst, into, _rows(src, table, into))
            database.advance_sequences(dst, tables.values())
            _check_counts(dst, copied)
    finally:
        reader.dispose()
    return copied


def _rows(src: Connection, table: Table, into: Table) -> Iterator[dict[str, Any]]:
    """The source rows of `table`, converted to what the target's columns take."""
    order = list(table.primary_key.columns) or list(table.columns)
    result = src.execution_options(yield_per=database.BATCH_ROWS).execute(
        select(table).order_by(*order)
    )
    for row in result.mappings():
        yield database.convert_row(into, dict(row))


def _check_counts(dst: Connection, copied: dict[str, int]) -> None:
    landed = database.row_counts(dst)
    differ = sorted(name for name, rows in copied.items() if landed.get(name) != rows)
    if differ:
        raise BackupError(f"Row counts differ after the copy ({', '.join(differ)}): undone.")


def _verify_and_audit(target: Settings, source_url: str) -> ChainReport:
    """Check the copied chain, then append the migration itself to it."""
    auditor = Auditor(target)
    try:
        chain = auditor.verify()
        shown = make_url(source_url).get_backend_name()
        auditor.record(
            AuditEvent.from_request(
                None,
                action="install_migrate",
                outcome="ok" if chain.ok else "error",
                principal=operator_principal(),
                status=200 if chain.ok else 500,
                detail=f"cli migrate from {shown}: {chain.message}"[:500],
            )
        )
    finally:
        auditor.close()
    return chain
