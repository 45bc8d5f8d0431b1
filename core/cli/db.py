"""`tenantllm db upgrade`: bring the configured database to the newest schema."""

from __future__ import annotations

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from core.cli.base import main, user_errors
from core.config import load_settings
from core.db import upgrade_database
from core.errors import ConfigError


@main.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
@user_errors
def upgrade() -> None:
    """Apply every pending migration to TENANTLLM_DATABASE_URL (default: the SQLite file)."""
    url = load_settings().resolved_database_url
    shown = make_url(url).render_as_string(hide_password=True)
    try:
        upgrade_database(url)
    except SQLAlchemyError as exc:
        raise ConfigError(
            f"Could not upgrade the database at {shown}: {exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    click.echo(f"database at {shown} is at the newest migration")
