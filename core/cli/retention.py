"""`tenantllm retention set|show|run`: how long each team keeps conversations and prompt text.

The operator acts as `local:<os user>` with admin rights. `set` overrides a team's plugin
(audited `retention_set`, refused ones too); `run` applies every team's policy now, as the
app's daily job does, and audits what it removed (`retention`, one event per team).
"""

from __future__ import annotations

import json
import sys

import click

from core.cli.base import main, user_errors
from core.cli.operator_audit import record_operator_action
from core.config import get_settings
from core.db import upgrade_database
from core.errors import TenantLLMError
from core.plugins import load_tenants
from core.rbac import operator_principal
from core.retention.policy import (
    RetentionPolicy,
    parse_days,
    policies,
    require_retention_admin,
    set_override,
)
from core.retention.run import apply_retention
from core.services import build_services

_DAYS = "DAYS|keep|default"
_FLAGS = {"conversation_days": "--conversations", "prompt_text_days": "--prompt-text"}


@main.group()
def retention() -> None:
    """How long each team keeps conversations and the prompt text of its audit rows."""


@retention.command("set")
@click.option("--tenant", "tenant_id", required=True, help="The team (tenant id).")
@click.option("--conversations", metavar=_DAYS, help="Delete conversations idle this long.")
@click.option("--prompt-text", metavar=_DAYS, help="Drop audit prompt text older than this.")
@user_errors
def set_(tenant_id: str, conversations: str | None, prompt_text: str | None) -> None:
    """Override a team's retention; `keep` keeps forever, `default` goes back to its plugin's."""
    settings = get_settings()
    upgrade_database(settings.resolved_database_url)
    asked = {"conversation_days": conversations, "prompt_text_days": prompt_text}
    given = {k: v for k, v in asked.items() if v is not None}
    request = " ".join(f"{k}={v}" for k, v in given.items())
    known: str | None = None
    try:
        tenant = load_tenants(settings).get(tenant_id)  # TenantNotFound for a typo
        known = tenant.id
        require_retention_admin(operator_principal())
        changes = {k: parse_days(_FLAGS[k], v) for k, v in given.items()}
        actor = operator_principal().subject
        policy = set_override(settings.resolved_database_url, tenant, changes, actor=actor)
    except TenantLLMError as exc:
        record_operator_action(
            settings, "retention_set", "error", known, f"refused {request}: {exc.message}"
        )
        raise
    record_operator_action(settings, "retention_set", "ok", known, f"{request} -> {_line(policy)}")
    click.echo(_line(policy))


@retention.command("show")
@click.option("--tenant", "tenant_id", default=None, help="Only this team.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@user_errors
def show(tenant_id: str | None, as_json: bool) -> None:
    """Each team's retention in effect, and whether its plugin or an admin set it."""
    settings = get_settings()
    upgrade_database(settings.resolved_database_url)
    registry = load_tenants(settings)
    tenants = [registry.get(tenant_id)] if tenant_id is not None else registry.all()
    require_retention_admin(operator_principal())
    for policy in policies(settings.resolved_database_url, tenants):
        click.echo(json.dumps(policy.as_json()) if as_json else _line(policy))


@retention.command("run")
@user_errors
def run() -> None:
    """Apply every team's retention now (the app does it daily); print what was removed."""
    settings = get_settings()
    require_retention_admin(operator_principal())
    services = build_services(settings)
    try:
        results = apply_retention(services, actor=operator_principal().subject)
    finally:
        services.auditor.close()  # the `retention` events are stored before the exit
    if not results:
        click.echo("No team has a retention policy: nothing removed.")
    for result in results:
        click.echo(f"{result.tenant_id:<12} {result.summary()}")
    if any(result.error is not None for result in results):
        sys.exit(1)  # the other teams were still done; the failures are audited


def _line(policy: RetentionPolicy) -> str:
    def days(value: int | None, source: str) -> str:
        return f"{'keep' if value is None else f'{value} days'} ({source})"

    conv = days(policy.conversation_days, policy.conversation_source)
    text = days(policy.prompt_text_days, policy.prompt_text_source)
    return f"{policy.tenant_id:<12} conversations {conv}  prompt text {text}"
