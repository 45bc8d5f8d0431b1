"""The SQL database as a logical dump: one JSON-lines file per table, plus the Alembic revision.

Why logical and not SQLite's file (or pg_dump): one format for both backends, so an install
can move from SQLite to PostgreSQL through a backup, and no server tool is needed. Tables
are found by reflection (every table, also ones added by later migrations) and written in
foreign-key order; restore migrates an empty database to the archive's revision, loads the
rows in one transaction, then migrates to the newest revision.

Consistency: a SQLite source is first copied with SQLite's online backup API (one snapshot,
WAL included, writers not blocked); PostgreSQL is read in one REPEATABLE READ transaction.
Values: times are written as ISO text in UTC (every stored time is UTC: core/db.utcnow),
bytes as base64, decimals as text; restore converts them back by the target column's type.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Column, MetaData, Table, create_engine, func, select, text
from sqlalchemy.engine import Connection, Engine, RowMapping, make_url

from core.db import MIGRATIONS_DIR

VERSION_TABLE = "alembic_version"
BATCH_ROWS = 1000


def is_sqlite(url: str) -> bool:
    """True for a SQLite URL."""
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for other backends or an in-memory database)."""
    database = make_url(url).database
    if not is_sqlite(url) or not database or database == ":memory:":
        return None
    return Path(database)


def snapshot_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of a live SQLite file (online backup API: the WAL is included)."""
    # Read-only, as a URI (as_uri escapes '?' and '#' in the path).
    src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()


def reflected_tables(conn: Connection) -> list[Table]:
    """Every table but Alembic's, parents before children (foreign-key order)."""
    metadata = MetaData()
    metadata.reflect(bind=conn)
    return [t for t in metadata.sorted_tables if t.name != VERSION_TABLE]


def current_revision(conn: Connection) -> str | None:
    """The Alembic revision the database is at (None: never migrated)."""
    return MigrationContext.configure(conn).get_current_revision()


def open_for_dump(url: str) -> Engine:
    """An engine that reads one consistent snapshot (the caller disposes it)."""
    if is_sqlite(url):
        return create_engine(url)
    return create_engine(url, isolation_level="REPEATABLE READ")


def read_rows(conn: Connection, table: Table) -> Iterator[RowMapping]:
    """`table`'s rows in primary-key order, fetched in batches."""
    order = list(table.primary_key.columns) or list(table.columns)
    result = conn.execution_options(yield_per=BATCH_ROWS).execute(select(table).order_by(*order))
    yield from result.mappings()


def dump_table(conn: Connection, table: Table, out: IO[bytes]) -> int:
    """Write `table`'s rows as JSON lines (primary-key order); returns the row count."""
    rows = 0
    for row in read_rows(conn, table):
        line = {name: _encode(value) for name, value in row.items()}
        out.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
        rows += 1
    return rows


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value.astimezone(UTC) if value.tzinfo else value).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Decimal):
        return str(value)
    return value


def decode_rows(table: Table, lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """The rows of a dumped table, converted to what `table`'s columns take."""
    columns = {c.name: c for c in table.columns}
    for raw in lines:
        if raw.strip():
            row = json.loads(raw)
            yield {name: _decode(value, columns[name]) for name, value in row.items()}


def convert_row(table: Table, row: Mapping[str, Any]) -> dict[str, Any]:
    """A row read from one backend, as `table`'s columns on another take it (as a restore)."""
    columns = {c.name: c for c in table.columns}
    return {name: _decode(_encode(value), columns[name]) for name, value in row.items()}


def _decode(value: Any, column: Column[Any]) -> Any:
    if value is None:
        return None
    try:
        kind = column.type.python_type
    except NotImplementedError:
        return value
    if kind is datetime:
        moment = datetime.fromisoformat(value)
        # Stored times are UTC; SQLite keeps them naive, PostgreSQL wants them aware.
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if kind is date:
        return date.fromisoformat(value)
    if kind is bytes:
        return base64.b64decode(value)
    if kind is Decimal:
        return Decimal(value)
    return value


def insert_rows(conn: Connection, table: Table, rows: Iterable[dict[str, Any]]) -> int:
    """Insert `rows` in batches; returns how many."""
    batch: list[dict[str, Any]] = []
    count = 0
    for row in rows:
        batch.append(row)
        if len(batch) >= BATCH_ROWS:
            conn.execute(table.insert(), batch)
            count, batch = count + len(batch), []
    if batch:
        conn.execute(table.insert(), batch)
        count += len(batch)
    return count


def advance_sequences(conn: Connection, tables: Iterable[Table]) -> None:
    """PostgreSQL: move each serial primary key's sequence past the restored rows.

    Rows are inserted with their ids, which does not advance the sequence: without this the
    next new row (e.g. a chat message) would collide with a restored one.
    """
    if conn.dialect.name != "postgresql":
        return
    for table in tables:
        keys = list(table.primary_key.columns)
        if len(keys) != 1 or keys[0].type.python_type is not int:
            continue
        sequence = conn.execute(
            text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": table.name, "c": keys[0].name}
        ).scalar()
        highest = conn.execute(select(func.max(keys[0]))).scalar()
        if sequence and highest is not None:
            conn.execute(text("SELECT setval(:s, :v)"), {"s": sequence, "v": highest})


def wipe(engine: Engine, keep_tables: bool) -> None:
    """Undo a failed load into an external database: back to no tables, or to empty tables.

    `keep_tables`: the database had (empty) tables before the load, so only rows go.
    """
    with engine.begin() as conn:
        metadata = MetaData()
        metadata.reflect(bind=conn)
        if not keep_tables:
            metadata.drop_all(bind=conn)
            return
        for table in reversed(metadata.sorted_tables):
            if table.name != VERSION_TABLE:
                conn.execute(table.delete())


def row_counts(conn: Connection) -> dict[str, int]:
    """Rows per table (every table but Alembic's)."""
    return {
        t.name: int(conn.execute(select(func.count()).select_from(t)).scalar() or 0)
        for t in reflected_tables(conn)
    }


def known_revision(revision: str) -> bool:
    """True when this version's migrations include `revision` (older or newest)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    try:
        return ScriptDirectory.from_config(config).get_revision(revision) is not None
    except CommandError:
        return False
