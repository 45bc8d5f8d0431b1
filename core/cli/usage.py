"""`tenantllm usage`: tokens, requests and distinct users per team or member, for chargeback.

Computed from the audit log (core/usage: which rows count and why). The operator acts as
`local:<os user>` with admin rights, so every team is in scope unless `--tenant` names one;
the scope still comes from `rbac.allowed_tenants`, like the Usage tab's. The read is audited
(`usage_view`), as reading the audit log is.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import IO

import click

from core.cli.audit import parse_time
from core.cli.base import main, user_errors
from core.cli.operator_audit import record_operator_action
from core.config import get_settings
from core.db import upgrade_database
from core.plugins import load_tenants
from core.rbac import allowed_tenants, operator_principal
from core.usage.export import json_lines, write_csv
from core.usage.query import UsageQuery, UsageRow, usage_rows


def _when(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    return parse_time(value)


def _table(rows: Sequence[UsageRow], by: str, stream: IO[str]) -> None:
    who = "user" if by == "user" else "users"
    header = f"{'day':<10} {'team':<12} {who:<28} {'tokens in':>11} {'tokens out':>11} "
    click.echo(header + f"{'requests':>9}", file=stream)
    for r in rows:
        member = (r.email or r.user or "-") if by == "user" else str(r.users)
        click.echo(
            f"{r.day or 'all':<10} {r.tenant_id:<12} {member:<28} {r.tokens_in:>11,} "
            f"{r.tokens_out:>11,} {r.requests:>9,}",
            file=stream,
        )


@main.command("usage")
@click.option("--since", default="30d", show_default=True, callback=_when,
              help="From (30m, 24h, 7d or an ISO time).")  # fmt: skip
@click.option("--until", default=None, callback=_when, help="Before (same formats).")
@click.option("--by", type=click.Choice(["team", "user"]), default="team", show_default=True)
@click.option("--tenant", "tenant_id", default=None, help="Only this team.")
@click.option("--per-day", is_flag=True, help="One row per UTC day (default: the window's sum).")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with a header row.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--output", type=click.Path(dir_okay=False), help="File to write (default stdout).")
@user_errors
def usage(
    since: datetime | None,
    until: datetime | None,
    by: str,
    tenant_id: str | None,
    per_day: bool,
    as_csv: bool,
    as_json: bool,
    output: str | None,
) -> None:
    """Chat tokens (in/out), requests and distinct users per team or member."""
    if as_csv and as_json:
        raise click.UsageError("Choose one of --csv and --json.")
    settings = get_settings()
    upgrade_database(settings.resolved_database_url)
    if tenant_id is not None:
        load_tenants(settings).get(tenant_id)  # TenantNotFound for a typo
    query = UsageQuery(since, until, by, per_day, tenant_id)  # type: ignore[arg-type]
    tenants = allowed_tenants(operator_principal(), "read_usage")
    rows = usage_rows(settings.resolved_database_url, query, tenants=tenants)
    record_operator_action(
        settings, "usage_view", "ok", tenant_id, f"cli usage by={by} since={since} rows={len(rows)}"
    )
    if output is None:
        _write(rows, by, as_csv, as_json, sys.stdout)
        return
    # Per-member usage is personal data: readable by the operator only, like audit exports.
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w", encoding="utf-8", newline="") as stream:
        _write(rows, by, as_csv, as_json, stream)
    click.echo(f"wrote {len(rows)} rows to {output}", err=True)


def _write(rows: list[UsageRow], by: str, as_csv: bool, as_json: bool, stream: IO[str]) -> None:
    if as_csv:
        write_csv(rows, stream)
    elif as_json:
        for line in json_lines(rows):
            click.echo(line, file=stream)
    else:
        _table(rows, by, stream)
