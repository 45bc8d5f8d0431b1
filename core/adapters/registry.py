"""A team's adapter versions in SQL, and the folder of the one its chat turns use.

Every function takes the team's id and reads or changes only that team's rows: a version
number means "this team's version N", so another team's adapters can be neither seen nor
named. Activating one version deactivates the team's others in the same transaction: a
team has at most one active adapter, and a chat turn reads it with one primary-key-indexed
query (`active_adapter_path`).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.adapters.models import AdapterRow
from core.config import Settings
from core.db import session_scope, utcnow
from core.errors import NotFound

ADAPTERS_SUBDIR = "adapters"


@dataclass(frozen=True)
class AdapterVersion:
    """One adapter of a team, as `adapters list` shows it."""

    tenant_id: str
    version: int
    active: bool
    path: str
    base_model: str
    rank: int
    examples: int
    steps: int
    final_loss: float
    created_by: str
    created_at: datetime

    def as_json(self) -> dict[str, object]:
        """A JSON-ready dict (the timestamp in ISO 8601)."""
        return {**self.__dict__, "created_at": self.created_at.isoformat()}


def adapters_dir(settings: Settings, tenant_id: str) -> Path:
    """The team's adapters folder, inside its own data directory (`tenants/<id>/`)."""
    return settings.data_dir / "tenants" / tenant_id / ADAPTERS_SUBDIR


def adapter_folder(settings: Settings, tenant_id: str, version: int) -> Path:
    """A new folder for version `version` of the team's adapter: `<team>-v<N>-<8 hex>`.

    The name is never reused, across teams nor after a removal: vLLM knows an adapter by its
    name (remote server) or path (in-process engine) and keeps serving the weights it loaded
    first, so a retrained "v1" in the old folder would answer with the removed weights.
    """
    return adapters_dir(settings, tenant_id) / f"{tenant_id}-v{version}-{secrets.token_hex(4)}"


def next_version(url: str, tenant_id: str) -> int:
    """The number the team's next adapter gets: one more than its newest (1 for the first).
    After the newest is removed its number comes back; its folder name does not."""
    with session_scope(url) as session:
        newest = session.scalar(
            select(func.max(AdapterRow.version)).where(AdapterRow.tenant_id == tenant_id)
        )
    return (newest or 0) + 1


def register_adapter(url: str, row: AdapterRow, *, activate: bool) -> AdapterVersion:
    """Store a trained adapter of `row.tenant_id`; with `activate` it becomes the active one."""
    row.created_at = row.created_at or utcnow()
    row.active = False
    with session_scope(url) as session:
        session.add(row)
        session.flush()
        if activate:
            _activate(session, row.tenant_id, row.version)
        session.flush()
        session.refresh(row)
        return _version(row)


def list_adapters(url: str, tenant_id: str) -> list[AdapterVersion]:
    """The team's adapters, oldest first."""
    with session_scope(url) as session:
        rows = session.scalars(
            select(AdapterRow).where(AdapterRow.tenant_id == tenant_id).order_by(AdapterRow.version)
        ).all()
        return [_version(r) for r in rows]


def activate_adapter(url: str, tenant_id: str, version: int | None) -> AdapterVersion | None:
    """Make the team's `version` the active adapter (None: the base model for everyone of
    the team). NotFound if the team has no such version."""
    with session_scope(url) as session:
        if version is None:
            session.execute(
                update(AdapterRow).where(AdapterRow.tenant_id == tenant_id).values(active=False)
            )
            return None
        return _version(_activate(session, tenant_id, version))


def remove_adapter(
    url: str, tenant_id: str, version: int, delete_folder: Callable[[str], None]
) -> AdapterVersion:
    """Forget the team's `version` (NotFound if it has none) and delete its folder.

    The row goes first, in a transaction that commits only after `delete_folder` returned:
    a failed deletion keeps the row, so nothing points at a missing folder. An active
    adapter may be removed: the team's turns go back to the base model.
    """
    with session_scope(url) as session:
        row = _row(session, tenant_id, version)
        gone = _version(row)
        session.delete(row)
        session.flush()
        delete_folder(row.path)
    return gone


def active_adapter_path(url: str, tenant_id: str) -> str | None:
    """The folder of the team's active adapter, or None (the base model)."""
    with session_scope(url) as session:
        return session.scalar(
            select(AdapterRow.path).where(
                AdapterRow.tenant_id == tenant_id, AdapterRow.active.is_(True)
            )
        )


def _activate(session: Session, tenant_id: str, version: int) -> AdapterRow:
    row = _row(session, tenant_id, version)
    session.execute(
        update(AdapterRow)
        .where(AdapterRow.tenant_id == tenant_id, AdapterRow.version != version)
        .values(active=False)
    )
    row.active = True
    session.flush()
    return row


def _row(session: Session, tenant_id: str, version: int) -> AdapterRow:
    row = session.get(AdapterRow, (tenant_id, version))
    if row is None:
        raise NotFound(f"The team '{tenant_id}' has no adapter version {version}.")
    return row


def _version(row: AdapterRow) -> AdapterVersion:
    return AdapterVersion(
        tenant_id=row.tenant_id,
        version=row.version,
        active=bool(row.active),
        path=row.path,
        base_model=row.base_model,
        rank=row.rank,
        examples=row.examples,
        steps=row.steps,
        final_loss=row.final_loss,
        created_by=row.created_by,
        created_at=row.created_at,
    )
