"""Alembic environment: runs migrations against the URL given by core.db.upgrade_database."""

from __future__ import annotations

from alembic import context

from core.db import get_engine

url = context.config.attributes["connection_url"]
with get_engine(url).connect() as connection:
    context.configure(connection=connection, render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
