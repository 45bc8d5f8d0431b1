"""Alembic environment: runs migrations against the URL given by core.db.upgrade_database."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from core.db import get_engine

# Any fixed number: the PostgreSQL advisory lock all tenantllm processes migrate under.
MIGRATION_LOCK = 0x74_6C_6D_6D  # "tlmm"

url = context.config.attributes["connection_url"]
with get_engine(url).connect() as connection:
    context.configure(connection=connection, render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Replicas starting at once: one migrates, the others wait here for its commit and
            # then find the schema current (the version is read after the lock is held).
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        context.run_migrations()
    connection.commit()
