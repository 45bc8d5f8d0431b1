"""`tenantllm keys create|list|revoke`: API keys for programs, run by operators on the server.

The operator acts as `local:<os user>` with admin rights; every key operation is audited
with that actor. A new key is printed once and never stored in plain text.
"""

from __future__ import annotations

import json

import click

from core.auth import apikeys
from core.cli.base import main, user_errors
from core.cli.operator_audit import record_operator_action
from core.config import Settings, get_settings
from core.db import upgrade_database
from core.plugins import load_tenants
from core.rbac import authorize, operator_principal


def _prepared_settings() -> Settings:
    settings = get_settings()
    upgrade_database(settings.resolved_database_url)
    return settings


@main.group()
def keys() -> None:
    """Create, list and revoke tenant-scoped API keys (`tlm_...`)."""


@keys.command("create")
@click.option("--tenant", "tenant_id", required=True, help="The team (tenant id) of the key.")
@click.option(
    "--role",
    type=click.Choice(["member", "editor"]),
    default="member",
    show_default=True,
    help="What the key may do in its team.",
)
@click.option("--expires", default=None, help="Lifetime such as 30d, 12h, 2w (default: never).")
@user_errors
def create(tenant_id: str, role: str, expires: str | None) -> None:
    """Create a key and print it once."""
    settings = _prepared_settings()
    load_tenants(settings).get(tenant_id)  # TenantNotFound for a typo
    authorize(operator_principal(), tenant_id, "manage_keys")
    lifetime = apikeys.parse_duration(expires) if expires else None
    created = apikeys.create_key(
        settings,
        tenant_id=tenant_id,
        role=role,
        expires_in=lifetime,
        created_by=operator_principal().subject,
    )
    record_operator_action(
        settings, "api_key_create", "ok", tenant_id, f"key {created.key.id} role {role}"
    )
    expiry = created.key.expires_at.isoformat() if created.key.expires_at else "never"
    click.echo(f"key id:  {created.key.id}  (team {tenant_id}, role {role}, expires {expiry})")
    click.echo(f"API key: {created.secret}")
    click.echo("Copy it now: it is not shown again.", err=True)


@keys.command("list")
@click.option("--tenant", "tenant_id", default=None, help="Only this team's keys.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@user_errors
def list_(tenant_id: str | None, as_json: bool) -> None:
    """List keys (never their secrets)."""
    settings = _prepared_settings()
    for key in apikeys.visible_keys(settings, operator_principal(), tenant_id):
        state = "revoked" if key.revoked_at else ("active" if key.active else "expired")
        expires = key.expires_at.isoformat() if key.expires_at else "never"
        if as_json:
            row = {
                "id": key.id,
                "tenant": key.tenant_id,
                "role": key.role,
                "state": state,
                "created_by": key.created_by,
                "created_at": key.created_at.isoformat(),
                "expires_at": expires,
            }
            click.echo(json.dumps(row))
        else:
            click.echo(
                f"{key.id}  {key.tenant_id:<12} {key.role:<7} {state:<8} "
                f"expires {expires}  by {key.created_by}"
            )


@keys.command("revoke")
@click.argument("key_id")
@user_errors
def revoke(key_id: str) -> None:
    """Revoke a key: it stops working at once."""
    settings = _prepared_settings()
    info = apikeys.revoke_key(settings, key_id, principal=operator_principal())
    record_operator_action(settings, "api_key_revoke", "ok", info.tenant_id, f"key {info.id}")
    click.echo(f"Revoked key {info.id} (team {info.tenant_id}).")
