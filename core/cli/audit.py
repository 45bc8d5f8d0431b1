"""`tenantllm audit verify|list|export`: read and check the audit log from the server.

Reading the audit log is itself audited: each command records an `audit_view` event with the
actor `local:<os user>` (the CLI runs on the server with operator rights).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from core.audit import query as audit_query
from core.audit.auditor import AuditEvent, AuditFilters, Auditor
from core.cli.base import main, user_errors
from core.config import load_settings
from core.db import upgrade_database
from core.errors import ConfigError
from core.rbac import operator_principal

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


def _unavailable(url: str, exc: Exception) -> ConfigError:
    shown = make_url(url).render_as_string(hide_password=True)
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    return ConfigError(f"The audit database at {shown} is unavailable: {first_line}")


def _record_view(auditor: Auditor, what: str, filters: AuditFilters | None, ok: bool) -> None:
    shown = {k: v for k, v in vars(filters).items() if v} if filters else {}
    # No request: the CLI's caller is the operator on this machine.
    auditor.record(
        AuditEvent.from_request(
            None,
            action="audit_view",
            outcome="ok" if ok else "error",
            principal=operator_principal(),
            tenant_id=filters.tenant_id if filters else None,
            status=200 if ok else 500,
            detail=f"cli {what} " + " ".join(f"{k}={v}" for k, v in shown.items()),
        )
    )


@contextmanager
def _viewing(what: str, filters: AuditFilters | None) -> Iterator[Auditor]:
    """An auditor for one CLI read; the read is audited (`audit_view`) however it ends."""
    auditor = Auditor(load_settings())
    ok = False
    try:
        upgrade_database(auditor.database_url)
        auditor.flush()  # replays what a dead process left in the spool, so reads are complete
        yield auditor
        ok = True
    except SQLAlchemyError as exc:
        raise _unavailable(auditor.database_url, exc) from None
    finally:
        _record_view(auditor, what, filters, ok)
        auditor.close()  # stores the view event, or spools it while the database is down


@main.group()
def audit() -> None:
    """Read, export and verify the audit log."""


@audit.command("verify")
@click.option("--expect-head", help="A head hash printed earlier; fails if it is gone.")
@user_errors
def verify(expect_head: str | None) -> None:
    """Check the hash chain; exit 1 naming the first bad event. Prints the head hash."""
    with _viewing("verify", None) as auditor:
        report = auditor.verify(expect_head)
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
    with _viewing("list", filters) as auditor:
        result = auditor.query(filters, page, limit)
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
    with _viewing("export", filters) as auditor:
        if output is None:
            count = audit_query.write_csv(auditor.database_url, filters, sys.stdout)
        else:
            # The export holds personal data: readable by the operator only.
            fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(fd, "w", encoding="utf-8", newline="") as stream:
                count = audit_query.write_csv(auditor.database_url, filters, stream)
    click.echo(f"exported {count} events", err=True)
