"""`tenantllm adapters train|list|activate|remove`: a team's own fine-tuned LoRA adapters.

The operator acts as `local:<os user>` (admin rights); core/adapters/admin.py says who else
may (a team's team admin). `train`, `activate` and `remove` are audited (actions
`adapter_train`, `adapter_activate`, `adapter_remove`), refused ones too, with what was asked.
Every command names one team with `--tenant` and sees and changes only that team's adapters:
a version number is that team's version N.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import click

from core.adapters.admin import (
    delete_adapter_folder,
    require_adapter_manager,
    train_team_adapter,
)
from core.adapters.registry import (
    AdapterVersion,
    activate_adapter,
    list_adapters,
    remove_adapter,
)
from core.adapters.training import TrainingOptions
from core.cli.base import main, user_errors
from core.cli.operator_audit import record_operator_action
from core.config import Settings, get_settings
from core.db import upgrade_database
from core.errors import TenantLLMError
from core.plugins import load_tenants
from core.rbac import operator_principal

_TENANT = click.option("--tenant", "tenant_id", required=True, help="The team (tenant id).")
_DEFAULTS = TrainingOptions()


@main.group()
def adapters() -> None:
    """A team's fine-tuned LoRA adapters, served by the shared engine next to the others'."""


@adapters.command("train")
@_TENANT
@click.option(
    "--data",
    "data",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help='JSON lines: {"prompt": "...", "completion": "..."} per line.',
)
@click.option("--steps", default=_DEFAULTS.steps, show_default=True, help="Optimizer steps.")
@click.option("--rank", default=_DEFAULTS.rank, show_default=True, help="LoRA rank.")
@click.option(
    "--learning-rate", default=_DEFAULTS.learning_rate, show_default=True, help="AdamW rate."
)
@click.option("--batch-size", default=_DEFAULTS.batch_size, show_default=True)
@click.option(
    "--max-tokens",
    default=_DEFAULTS.max_tokens,
    show_default=True,
    help="Longest example in tokens (longer prompts are cut from the front).",
)
@click.option(
    "--layers",
    default=_DEFAULTS.layers,
    show_default=True,
    help="Adapt only the top N decoder layers (0: all).",
)
@click.option("--threads", default=0, help="CPU threads (0: one per core).")
@click.option("--activate/--no-activate", default=True, show_default=True, help="Serve it at once.")
@user_errors
def train(
    tenant_id: str,
    data: Path,
    steps: int,
    rank: int,
    learning_rate: float,
    batch_size: int,
    max_tokens: int,
    layers: int,
    threads: int,
    activate: bool,
) -> None:
    """Fine-tune a new adapter version of the team on DATA and register it."""
    settings = get_settings()
    options = TrainingOptions(
        steps=steps,
        rank=rank,
        learning_rate=learning_rate,
        batch_size=batch_size,
        max_tokens=max_tokens,
        layers=layers,
        threads=threads,
    )
    request = f"train on {data.name}: steps={steps} rank={rank} lr={learning_rate}"
    with _audited(settings, "adapter_train", tenant_id, request) as outcome:
        tenant = load_tenants(settings).get(outcome.tenant_id)
        trained = train_team_adapter(
            settings, operator_principal(), tenant, data, options, activate=activate
        )
        version, run = trained.version, trained.training
        outcome.detail = (
            f"version {version.version} trained on {run.examples} examples, {run.steps} steps, "
            f"loss {run.final_loss:.4f}, {run.seconds:.1f} s; active={version.active}"
        )
    click.echo(
        f"Team {version.tenant_id}: adapter version {version.version} "
        f"({'active' if version.active else 'not active'}), loss {run.final_loss:.4f}, "
        f"{run.seconds:.1f} s."
    )
    if not settings.enable_lora:
        click.echo("note: the engine serves adapters only with TENANTLLM_ENABLE_LORA=1.", err=True)


@adapters.command("list")
@_TENANT
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@user_errors
def list_(tenant_id: str, as_json: bool) -> None:
    """The team's adapter versions (the active one marked with *)."""
    settings = get_settings()
    upgrade_database(settings.resolved_database_url)
    known = load_tenants(settings).get(tenant_id).id  # TenantNotFound for a typo
    require_adapter_manager(operator_principal(), known)
    for version in list_adapters(settings.resolved_database_url, known):
        click.echo(json.dumps(version.as_json()) if as_json else _line(version))


@adapters.command("activate")
@_TENANT
@click.argument("version", required=False, type=int)
@click.option("--none", "to_base", is_flag=True, help="Serve the base model to the team.")
@user_errors
def activate(tenant_id: str, version: int | None, to_base: bool) -> None:
    """Make VERSION the adapter the team's chat turns use (or --none: the base model)."""
    settings = get_settings()
    if (version is None) == (not to_base):
        raise click.UsageError("Give a VERSION or --none (not both).")
    asked = f"activate {version if version is not None else 'none'}"
    with _audited(settings, "adapter_activate", tenant_id, asked) as outcome:
        require_adapter_manager(operator_principal(), outcome.tenant_id)
        chosen = activate_adapter(settings.resolved_database_url, outcome.tenant_id, version)
        outcome.detail = f"active: version {chosen.version}" if chosen else "active: base model"
    click.echo(f"Team {outcome.tenant_id}: {outcome.detail}.")


@adapters.command("remove")
@_TENANT
@click.argument("version", type=int)
@user_errors
def remove(tenant_id: str, version: int) -> None:
    """Delete the team's adapter VERSION (its folder too); an active one falls back to base."""
    settings = get_settings()
    with _audited(settings, "adapter_remove", tenant_id, f"remove {version}") as outcome:
        team = outcome.tenant_id
        require_adapter_manager(operator_principal(), team)
        gone = remove_adapter(
            settings.resolved_database_url,
            team,
            version,
            lambda path: delete_adapter_folder(settings, team, path),
        )
        was = " (it was active: the team's turns use the base model)" if gone.active else ""
        outcome.detail = f"removed version {gone.version}{was}"
    click.echo(f"Team {team}: {outcome.detail}.")


def _line(v: AdapterVersion) -> str:
    mark = "*" if v.active else " "
    when = v.created_at.strftime("%Y-%m-%d %H:%M")
    return (
        f"{mark} v{v.version:<4} {when}  rank {v.rank:<3} {v.examples} examples, "
        f"{v.steps} steps, loss {v.final_loss:.4f}  by {v.created_by}  {v.path}"
    )


@dataclass
class _Outcome:
    """The checked team of an audited command, and what its ok event says."""

    tenant_id: str = ""
    detail: str = ""


@contextmanager
def _audited(settings: Settings, action: str, tenant_id: str, request: str) -> Iterator[_Outcome]:
    """One audit event for the command: `ok` with the outcome's detail when the block ends,
    `error` with what was asked and why when it raises (the error then propagates).

    The team is checked first, so an unknown team is refused (and audited) before anything
    else happens.
    """
    upgrade_database(settings.resolved_database_url)
    outcome = _Outcome()
    try:
        outcome.tenant_id = load_tenants(settings).get(tenant_id).id
        yield outcome
    except Exception as exc:
        # A failure that is not the user's (the model failed to load, out of memory) is
        # audited too; its message stays in the log, the row names its class.
        reason = exc.message if isinstance(exc, TenantLLMError) else "failed"
        record_operator_action(
            settings,
            action,
            "error",
            outcome.tenant_id or None,
            f"refused {request}: {reason}",
            type(exc).__name__,
        )
        raise
    record_operator_action(settings, action, "ok", outcome.tenant_id, outcome.detail)
