"""The database connections of budget transactions: short, and not waiting for the disk.

SQLite: the process's shared engine (core/db), with `synchronous = NORMAL` (WAL) set on the
connection for the length of one transaction and given back afterwards.

PostgreSQL: an engine of its own per URL, whose connections run `synchronous_commit = off`
for their whole session, so no transaction pays a round trip to set it, and without the
shared engine's pre-ping (a round trip at every checkout). A connection that died (the
server restarted) fails one statement; SQLAlchemy then drops the pool and
`retry_once_on_disconnect` runs the transaction again on a new connection.

Why not wait for the disk: that wait was most of the 12-15 ms a budget added to every turn
on our machines. A crash of the app loses nothing; a crash of the database server or of the
machine can lose the last fraction of a second of counter changes, never consistency (the
database restarts as of a moment before). The audit log, written durably, stays the ledger
of what was used (and seeds counters: core/budgets/seeding.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Connection, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from core.db import get_engine
from core.errors import ConfigError

T = TypeVar("T")
_pg_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def _no_wait_for_disk(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("SET synchronous_commit TO OFF")
    cursor.close()
    dbapi_connection.commit()


def budget_engine(url: str) -> Engine:
    """The engine budget transactions use for `url` (see the module docstring)."""
    if not url.startswith("postgresql"):
        return get_engine(url)
    with _lock:
        engine = _pg_engines.get(url)
        if engine is None:
            engine = create_engine(url, pool_size=10, max_overflow=20)
            event.listen(engine, "connect", _no_wait_for_disk)
            _pg_engines[url] = engine
        return engine


def dispose_budget_engines() -> None:
    """Close every pooled connection of the budget engines (shutdown, tests)."""
    with _lock:
        for engine in _pg_engines.values():
            engine.dispose()
        _pg_engines.clear()


@contextmanager
def budget_transaction(url: str) -> Iterator[Connection]:
    """One transaction that commits without waiting for the disk; rolled back if it raises."""
    with budget_engine(url).connect() as conn:
        dialect = conn.dialect.name
        if dialect == "postgresql":
            with conn.begin():
                yield conn
        elif dialect == "sqlite":
            # pysqlite opens the database transaction at the first write, so the pragma runs
            # outside it; the pooled connection gets its own setting back afterwards.
            before = conn.exec_driver_sql("PRAGMA synchronous").scalar()
            conn.exec_driver_sql("PRAGMA synchronous = NORMAL")
            try:
                yield conn
                conn.commit()
            finally:
                conn.rollback()
                conn.exec_driver_sql(f"PRAGMA synchronous = {int(before or 2)}")
                conn.commit()
        else:
            raise ConfigError(f"Token budgets support SQLite and PostgreSQL, not {dialect}.")


@contextmanager
def autocommit(url: str) -> Iterator[Connection]:
    """A PostgreSQL connection where each statement is its own transaction (one round trip)."""
    with budget_engine(url).connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")


def retry_once_on_disconnect(work: Callable[[], T]) -> T:
    """`work()`, run again once if its connection had died (the pool is new by then)."""
    try:
        return work()
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        return work()
