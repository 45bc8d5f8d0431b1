"""`tenantllm audit verify|list|export`: read and check the audit log from the server.

Reading the audit log is itself audited: each command records an `audit_view` event with the
actor `local:<os user>` (the CLI runs on the server with operator rights).
"""

from __future__ import annotations

import getpass
import json
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from core import audit_query
from core.audit import AuditEvent, AuditFilters, Auditor
from core.cli.base import main, user_errors
from core.config import load_settings
from core.db import upgrade_database

_RELATIVE = re.compile(r"^(\d+)([mhd])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def parse_time(value: str | None) -> datetime | None:
    """`30m`, `24h`, `7d` (ago) or an ISO date/time (UTC unless it says otherwise)."""
    if value is None:
        return None
    match = _RELATIVE.match(value.strip())
    if match:
        amount, unit = match.groups()
        return datetime.now(UTC) - timedelta(**{_UNITS[unit]: int(amount)})
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: use an ISO date/time (2026-11-01, 2026-11-01T12:00) or 30m, 24h, 7d"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def _time_option(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    return parse_time(value)


def filter_options(func: Any) -> Any:
    """The filter options shared by `list` and `export`."""
    options = [
        click.option("--since", callback=_time_option, help="From (30m, 24h, 7d or ISO time)."),
        click.option("--until", callback=_time_option, help="Before (same formats)."),
        click.option("--tenant", help="Exactly this tenant id."),
        click.option("--user", help="Exactly this user subject or email."),
        click.option("--action", help="Exactly this action (chat, login, audit_view, ...)."),
        click.option(
            "--outcome",
            type=click.Choice(["ok", "denied", "error", "rate_limited", "cancelled"]),
        ),
        click.option("--flagged", is_flag=True, help="Only events with flags (e.g. injection)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _filters(params: dict[str, Any]) -> AuditFilters:
    return AuditFilters(
        since=params["since"],
        until=params["until"],
        tenant_id=params["tenant"],
        user=params["user"],
        action=params["action"],
        outcome=params["outcome"],
        flagged_only=params["flagged"],
    )


def _open_auditor() -> Auditor:
    settings = load_settings()
    upgrade_database(settings.resolved_database_url)
    auditor = Auditor(settings)
    auditor.flush()  # replays what a dead process left in the spool, so reads are complete
    return auditor


def _record_view(auditor: Auditor, what: str, filters: AuditFilters | None, ok: bool) -> None:
    shown = {k: v for k, v in vars(filters).items() if v} if filters else {}
    auditor.record(
        AuditEvent(
            action="audit_view",
            outcome="ok" if ok else "error",
            user_sub=f"local:{getpass.getuser()}",
            tenant_id=filters.tenant_id if filters else None,
            status=200 if ok else 500,
            detail=f"cli {what} " + " ".join(f"{k}={v}" for k, v in shown.items()),
        )
    )


@main.group()
def audit() -> None:
    """Read, export and verify the audit log."""


@audit.command("verify")
@click.option("--expect-head", help="A head hash printed earlier; fails if it is gone.")
@user_errors
def verify(expect_head: str | None) -> None:
    """Check the hash chain; exit 1 naming the first bad event. Prints the head hash."""
    auditor = _open_auditor()
    try:
        report = auditor.verify(expect_head)
        _record_view(auditor, "verify", None, report.ok)
    finally:
        auditor.close()
    click.echo(f"head seq {report.head_seq} hash {report.head_hash}")
    if not report.ok:
        click.echo(f"error: {report.message}", err=True)
        sys.exit(1)
    click.echo(report.message)


def _line(record: audit_query.AuditRecord) -> str:
    user = record.user_email or record.user_sub or "-"
    flags = ",".join(record.flags) or "-"
    return (
        f"{record.seq:>7} {record.created_at:%Y-%m-%d %H:%M:%S} {record.tenant_id or '-':<12} "
        f"{user:<24} {record.action:<14} {record.outcome:<12} {record.status:>3} "
        f"{record.latency_ms:>9.1f}ms in={record.tokens_in} out={record.tokens_out} {flags}"
    )


@audit.command("list")
@filter_options
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--page", default=1, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@user_errors
def list_events(limit: int, page: int, as_json: bool, **params: Any) -> None:
    """Show events, newest first."""
    filters = _filters(params)
    auditor = _open_auditor()
    try:
        result = auditor.query(filters, page, limit)
        _record_view(auditor, "list", filters, True)
    finally:
        auditor.close()
    for record in result.rows:
        click.echo(json.dumps(record.as_json()) if as_json else _line(record))
    if not as_json:
        click.echo(f"{len(result.rows)} of {result.total} matching events", err=True)


@audit.command("export")
@filter_options
@click.option("--csv", "as_csv", is_flag=True, default=True, help="CSV (the only format).")
@click.option("--output", type=click.Path(dir_okay=False), help="File to write (default stdout).")
@user_errors
def export(as_csv: bool, output: str | None, **params: Any) -> None:
    """Export matching events as CSV, oldest first."""
    filters = _filters(params)
    auditor = _open_auditor()
    try:
        if output is None:
            count = audit_query.write_csv(auditor.database_url, filters, sys.stdout)
        else:
            # The export holds personal data: readable by the operator only.
            fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(fd, "w", encoding="utf-8", newline="") as stream:
                count = audit_query.write_csv(auditor.database_url, filters, stream)
        _record_view(auditor, "export", filters, True)
    finally:
        auditor.close()
    click.echo(f"exported {count} events", err=True)
