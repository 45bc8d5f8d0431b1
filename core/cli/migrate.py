"""`tenantllm migrate --database-url URL`: this install onto the scale-out services.

An operator command, like `tenantllm backup`: whoever runs it holds the data dir and both
databases' credentials. The install is only read; it prints counts, never a team's content,
and the settings to switch to once it succeeded (docs/scale-out.md).
"""

from __future__ import annotations

import click

from core.backup.migrate import migrate_install
from core.cli.base import main, user_errors
from core.config import load_settings
from core.errors import BackupError


@main.command("migrate")
@click.option(
    "--database-url",
    required=True,
    help="The empty target database (SQLAlchemy URL, e.g. postgresql+psycopg://…).",
)
@user_errors
def migrate(database_url: str) -> None:
    """Copy this install's database (audit, sessions, keys, conversations, documents) to URL."""
    source = load_settings()
    target = source.model_copy(update={"database_url": database_url})
    report = migrate_install(source, target)
    rows = sum(report.table_rows.values())
    click.echo(f"copied {rows} rows in {len(report.table_rows)} tables to the target database")
    click.echo(f"{report.originals.moved} document originals now in the target's store")
    if report.originals.missing:
        click.echo(
            f"warning: {report.originals.missing} documents had no original in this install "
            "(they stay searchable but cannot be re-indexed)",
            err=True,
        )
    if report.chain is None or not report.chain.ok:
        message = report.chain.message if report.chain else "not checked"
        raise BackupError(f"copied, but the audit chain does not verify there: {message}")
    click.echo(report.chain.message)
    click.echo("now start every replica with TENANTLLM_DATABASE_URL set to the target database")
