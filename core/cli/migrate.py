"""`tenantllm migrate --database-url URL [--chroma-url URL]`: this install onto services.

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
@click.option(
    "--chroma-url",
    default="",
    help="A Chroma server to move every embedded team's vectors to (each its own database).",
)
@user_errors
def migrate(database_url: str, chroma_url: str) -> None:
    """Copy this install (audit, sessions, keys, conversations, documents, vectors) over."""
    source = load_settings()
    changes = {"database_url": database_url} | ({"chroma_url": chroma_url} if chroma_url else {})
    target = source.model_copy(update=changes)
    report = migrate_install(source, target)
    rows = sum(report.table_rows.values())
    click.echo(f"copied {rows} rows in {len(report.table_rows)} tables to the target database")
    click.echo(f"{report.originals.moved} document originals now in the target's store")
    for team, records in sorted(report.vectors.items()):
        click.echo(f"team {team}: {records} vectors copied to its database on {chroma_url}")
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
    moved = "TENANTLLM_DATABASE_URL" + (" and TENANTLLM_CHROMA_URL" if chroma_url else "")
    click.echo(f"now start every replica with {moved} set to the targets")
