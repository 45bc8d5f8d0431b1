"""`tenantllm fairness set|show`: each team's weight in the fair share of the engine.

Weights are relative: under contention a team at 2 gets twice the tokens of a team at 1. A
team's default comes from its plugin (`Tenant.weight`); an admin's override is stored in the
database and reaches every app replica within `core.scheduling.weights.REFRESH_SECONDS`.
The operator acts as `local:<os user>` with admin rights; every `set` is audited
(`fairness_weight_set`), refused ones too.
"""

from __future__ import annotations

import json
import time

import click

from core.cli.base import main, user_errors
from core.cli.knowledge import audit_operator, operator_knowledge
from core.errors import InvalidRequest, TenantLLMError
from core.rbac import authorize, operator_principal
from core.scheduling.weights import TeamWeight, WeightBook
from core.services import Services


def _book(services: Services) -> WeightBook:
    book = services.scheduler.weights
    book.refresh()
    return book


def parse_weight(value: str) -> float | None:
    """A weight option's value: a number, or `default` (back to the plugin's)."""
    if value.strip().lower() == "default":
        return None
    try:
        return float(value)
    except ValueError:
        raise InvalidRequest(f"--weight takes a number or 'default', not '{value}'.") from None


@main.group()
def fairness() -> None:
    """Each team's weight in the fair share of the one engine."""


@fairness.command("set")
@click.option("--tenant", "tenant_id", required=True, help="The team (tenant id).")
@click.option("--weight", required=True, help="A number above 0 (e.g. 2), or 'default'.")
@user_errors
def set_(tenant_id: str, weight: str) -> None:
    """Set a team's weight (or `default`: the plugin's)."""
    started = time.monotonic()
    with operator_knowledge(tenant_id) as (services, tenant):
        try:
            authorize(operator_principal(), None, "view_admin")
            stored = _book(services).set(
                tenant.id, parse_weight(weight), actor=operator_principal().subject
            )
        except TenantLLMError as exc:
            audit_operator(
                services, "fairness_weight_set", tenant, started, outcome="error", status=400,
                error_class=type(exc).__name__, detail=f"refused weight={weight}: {exc.message}",
            )  # fmt: skip
            raise
        audit_operator(
            services, "fairness_weight_set", tenant, started,
            detail=f"weight={stored.weight:g} ({stored.source})",
        )  # fmt: skip
    click.echo(_line(stored))


@fairness.command("show")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@user_errors
def show(as_json: bool) -> None:
    """Every team's weight in force and where it comes from (plugin or admin)."""
    from core.config import load_settings
    from core.services import build_services

    authorize(operator_principal(), None, "view_admin")
    services = build_services(load_settings())
    try:
        for weight in _book(services).all():
            click.echo(json.dumps(weight.__dict__) if as_json else _line(weight))
    finally:
        services.auditor.close()


def _line(weight: TeamWeight) -> str:
    return f"{weight.tenant_id}: weight {weight.weight:g} ({weight.source})"
