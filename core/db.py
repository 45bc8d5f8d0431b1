"""The SQL database: one SQLAlchemy engine per URL, a declarative `Base`, Alembic upgrades.

Every table of the product (audit events, documents, API keys, sessions, conversations) is
declared on `Base` in the module that owns it and created by the migrations in
`core/migrations/versions/`, never by `create_all`, so SQLite and PostgreSQL get the same schema.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


class Base(DeclarativeBase):
    """Declarative base shared by all tables."""


def utcnow() -> datetime:
    """The current time, timezone-aware (UTC): what every stored timestamp is written in."""
    return datetime.now(UTC)


def _enable_sqlite_wal(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the audit writer and readers work at the same time; busy_timeout avoids
    # "database is locked" when two writers meet.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def get_engine(url: str) -> Engine:
    """The shared SQLAlchemy engine for `url` (created on first use)."""
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            if url.startswith("sqlite"):
                path = url.split("///", 1)[-1]
                if path and path != ":memory:":
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                engine = create_engine(url, connect_args={"check_same_thread": False})
                event.listen(engine, "connect", _enable_sqlite_wal)
            else:
                engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
            _engines[url] = engine
        return engine


def dispose_engines() -> None:
    """Close every pooled connection (shutdown, tests)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A transaction: committed when the block ends, rolled back if it raises."""
    factory = sessionmaker(bind=get_engine(url), expire_on_commit=False)
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def upgrade_database(url: str, revision: str = "head") -> None:
    """Bring the schema at `url` to `revision` (default: the newest migration; idempotent)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection_url"] = url
    command.upgrade(config, revision)
