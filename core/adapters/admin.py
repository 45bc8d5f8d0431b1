"""What `tenantllm adapters` does: who may, and train-then-register.

Who may: an admin, or a team admin of that team (never an API key: a leaked key must not
change what a team's model answers). The caller audits, refusals too (the caller knows the
request), as for every operator command.

Training writes the new version's folder first and registers it only once the folder is
complete; a registration that fails removes the folder again, so the registry never points
at a missing or half-written adapter and no folder outlives a failed command.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import IntegrityError

from core.adapters.models import AdapterRow
from core.adapters.pairs import TrainingPair, read_pairs
from core.adapters.registry import (
    AdapterVersion,
    adapter_folder,
    adapters_dir,
    next_version,
    register_adapter,
)
from core.adapters.training import Example, TrainingOptions, TrainingResult, train_lora
from core.config import Settings
from core.engine.model import resolve_model
from core.errors import InvalidRequest, PermissionDenied
from core.identity import Principal
from core.tenancy import Tenant

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainedAdapter:
    """A registered new version and how its training went."""

    version: AdapterVersion
    training: TrainingResult


def require_adapter_manager(principal: Principal, tenant_id: str) -> None:
    """PermissionDenied unless `principal` is an admin or a team admin of `tenant_id`."""
    if principal.is_admin:
        return
    if principal.kind != "api_key" and principal.role_in(tenant_id) == "team_admin":
        return
    raise PermissionDenied(f"You may not manage the adapters of the team '{tenant_id}'.")


def training_examples(tenant: Tenant, pairs: list[TrainingPair]) -> list[Example]:
    """Each pair as the team's chat turns lay it out (its system prompt and question
    template, no sources), and as a bare question (a client's own plain chat)."""
    examples = []
    for pair in pairs:
        framed = tenant.prompt.render(question=pair.prompt, sources=[], history=[])
        examples.append(Example(framed, pair.completion))
        examples.append(Example([{"role": "user", "content": pair.prompt}], pair.completion))
    return examples


def train_team_adapter(
    settings: Settings,
    principal: Principal,
    tenant: Tenant,
    data: Path,
    options: TrainingOptions,
    *,
    activate: bool = True,
) -> TrainedAdapter:
    """Train a new adapter version of `tenant` on the pairs in `data`, register it (and with
    `activate` make it the one the team's chat turns use)."""
    require_adapter_manager(principal, tenant.id)
    options.check()
    if options.rank > settings.max_lora_rank:
        raise InvalidRequest(
            f"The engine serves adapters up to rank {settings.max_lora_rank} "
            f"(TENANTLLM_MAX_LORA_RANK); train with --rank {settings.max_lora_rank} or lower, "
            "or raise the setting (every adapter turn gets slower with it)."
        )
    pairs = read_pairs(data)
    model_dir = resolve_model(settings)
    url = settings.resolved_database_url
    version = next_version(url, tenant.id)
    target = adapter_folder(settings, tenant.id, version)
    adapters_dir(settings, tenant.id).mkdir(mode=0o700, parents=True, exist_ok=True)
    result = train_lora(model_dir, training_examples(tenant, pairs), target, options)
    row = AdapterRow(
        tenant_id=tenant.id,
        version=version,
        path=str(target.resolve()),
        base_model=settings.model,
        rank=options.rank,
        examples=result.examples,
        steps=result.steps,
        final_loss=result.final_loss,
        created_by=principal.subject,
    )
    try:
        stored = register_adapter(url, row, activate=activate)
    except IntegrityError:
        shutil.rmtree(target, ignore_errors=True)
        raise InvalidRequest(
            f"Another training of the team '{tenant.id}' registered version {version} first; "
            "run the command again."
        ) from None
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return TrainedAdapter(stored, result)


def delete_adapter_folder(settings: Settings, tenant_id: str, path: str) -> None:
    """Delete an adapter's folder, only if it lies inside the team's adapters folder."""
    folder = Path(path).resolve()
    if not folder.is_relative_to(adapters_dir(settings, tenant_id).resolve()):
        log.warning("adapter folder %s is outside the team's folder; left in place", folder)
        return
    shutil.rmtree(folder, ignore_errors=True)
