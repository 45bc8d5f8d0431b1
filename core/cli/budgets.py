"""`tenantllm budgets set|show`: token budgets per team and per member, run by operators.

The operator acts as `local:<os user>` with admin rights. Every `set` is audited (action
`budget_set`), refused ones too, with what was asked. A budget counts prompt + completion
tokens per UTC day and month (core/budgets).
"""

from __future__ import annotations

import json

import click

from core.budgets.admin import BudgetStatus, budget_report, require_budget_admin, set_budget
from core.budgets.store import changes_summary
from core.cli.base import main, user_errors
from core.cli.operator_audit import record_operator_action
from core.config import get_settings
from core.db import upgrade_database
from core.errors import InvalidRequest, TenantLLMError
from core.plugins import load_tenants
from core.rbac import operator_principal

_N = "N|off"


def parse_tokens(flag: str, value: str) -> int | None:
    """A budget option's value: a number of tokens (`2000000`, `2_000_000`, `2,000,000`) or
    `off` (no budget); InvalidRequest otherwise."""
    text = value.strip().lower()
    if text in ("off", "none"):
        return None
    digits = text.replace(",", "").replace("_", "")
    if not digits.isdigit():
        raise InvalidRequest(f"{flag} takes a number of tokens or 'off', not '{value}'.")
    return int(digits)


@main.group()
def budgets() -> None:
    """Token budgets (prompt + completion tokens) per team and member, per UTC day and month."""


@budgets.command("set")
@click.option("--tenant", "tenant_id", required=True, help="The team (tenant id).")
@click.option("--daily", metavar=_N, help="The team's tokens per day (with --user: theirs).")
@click.option("--monthly", metavar=_N, help="The team's tokens per month (with --user: theirs).")
@click.option("--member-daily", metavar=_N, help="Default tokens per day for each member.")
@click.option("--member-monthly", metavar=_N, help="Default tokens per month for each member.")
@click.option(
    "--user",
    default=None,
    help="Set this member's own budget: their subject (user_sub in the audit log), or "
    "key:<id> for an API key.",
)
@user_errors
def set_(
    tenant_id: str,
    daily: str | None,
    monthly: str | None,
    member_daily: str | None,
    member_monthly: str | None,
    user: str | None,
) -> None:
    """Set (or with `off`, remove) budgets; options not given keep their value."""
    settings = get_settings()
    upgrade_database(settings.resolved_database_url)
    asked = {"daily": daily, "monthly": monthly}
    asked |= {"member_daily": member_daily, "member_monthly": member_monthly}
    given = {name: value for name, value in asked.items() if value is not None}
    who = f"user {user}" if user is not None else "team"
    request = f"{who}: " + " ".join(f"{k}={v}" for k, v in given.items())
    known: str | None = None
    try:
        known = load_tenants(settings).get(tenant_id).id  # TenantNotFound for a typo
        require_budget_admin(operator_principal())
        changes = {k: parse_tokens("--" + k.replace("_", "-"), v) for k, v in given.items()}
        stored = set_budget(
            settings.resolved_database_url,
            known,
            changes,
            user=user,
            actor=operator_principal().subject,
        )
    except TenantLLMError as exc:
        record_operator_action(
            settings,
            "budget_set",
            "error",
            known,
            f"refused {request}: {exc.message}",
            type(exc).__name__,
        )
        raise
    record_operator_action(
        settings, "budget_set", "ok", known, f"{who}: {changes_summary(changes)}"
    )
    if stored is None:
        click.echo(f"Team {known}, {who}: no budget left (removed).")
    else:
        click.echo(f"Team {known}, {who}: {changes_summary(stored)}")


@budgets.command("show")
@click.option("--tenant", "tenant_id", default=None, help="Only this team's budgets.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@user_errors
def show(tenant_id: str | None, as_json: bool) -> None:
    """Budgets and what is used of them today and this month (UTC)."""
    settings = get_settings()
    upgrade_database(settings.resolved_database_url)
    if tenant_id is not None:
        load_tenants(settings).get(tenant_id)  # TenantNotFound for a typo
    require_budget_admin(operator_principal())
    for status in budget_report(settings.resolved_database_url, tenant_id):
        click.echo(json.dumps(status.as_json()) if as_json else _line(status))


def _line(status: BudgetStatus) -> str:
    def n(value: int | None) -> str:
        return "-" if value is None else f"{value:,}"

    if status.subject == "*":
        caps = f"daily {n(status.daily)} monthly {n(status.monthly)} "
        caps += f"member-daily {n(status.member_daily)} member-monthly {n(status.member_monthly)}"
        who = "team"
    else:
        caps = f"daily {n(status.daily)} monthly {n(status.monthly)}"
        who = status.subject
    used = f"used today {status.used_today:,}, this month {status.used_this_month:,}"
    held = f", running {status.held_now:,}" if status.held_now else ""
    return f"{status.tenant_id:<12} {who:<24} {caps}  ({used}{held})"
