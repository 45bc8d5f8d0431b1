"""`tenantllm backup --out FILE` / `tenantllm restore FILE`: one install in one archive.

Operator commands, like `tenantllm db`: whoever runs them already holds the data dir and the
database credentials, so there is no sign-in; a backup is audited in the source install,
a restore in the restored one. They print counts only, never a team's content.
"""

from __future__ import annotations

from pathlib import Path

import click

from core.audit.auditor import AuditEvent, Auditor
from core.backup.create import create_backup
from core.backup.restore import restore_backup
from core.cli.base import main, user_errors
from core.config import load_settings
from core.errors import BackupError
from core.rbac import operator_principal


@main.command("backup")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The archive to write (.tar.gz); must not exist yet.",
)
@user_errors
def backup(out: Path) -> None:
    """Write the database, every team's stores and encrypted files, and a manifest to FILE."""
    settings = load_settings()
    auditor = Auditor(settings)
    ok = False
    try:
        manifest = create_backup(settings, out)
        ok = True
    finally:
        auditor.record(
            AuditEvent.from_request(
                None,
                action="backup_create",
                outcome="ok" if ok else "error",
                principal=operator_principal(),
                status=200 if ok else 500,
                detail=f"cli backup --out {out.name}",
            )
        )
        auditor.close()
    rows = sum(manifest.table_rows.values())
    files = sum(1 for name in manifest.members if name.startswith("files/"))
    click.echo(
        f"backup written to {out}: {rows} rows in {len(manifest.table_rows)} tables "
        f"(migration {manifest.alembic_revision}), {files} files"
    )
    if manifest.master_key_source == "setting":
        click.echo("restore needs the same TENANTLLM_MASTER_KEY (it is not in the archive)")
    else:
        click.echo(
            "the archive holds the development master key: keep it as private as the data dir"
        )


@main.command("restore")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@user_errors
def restore(archive: Path) -> None:
    """Restore ARCHIVE into an empty data dir and an empty database (else refuse)."""
    report = restore_backup(load_settings(), archive)
    rows = sum(report.table_rows.values())
    click.echo(
        f"restored {rows} rows in {len(report.table_rows)} tables and {report.files} files "
        f"from {archive} (made {report.manifest.created_at})"
    )
    if not report.chain.ok:
        raise BackupError(f"restored, but the audit chain does not verify: {report.chain.message}")
    click.echo(report.chain.message)
