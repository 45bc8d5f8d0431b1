"""A team's retention policy: its plugin's default, or an admin's override.

Per field, an override row holds NULL (the plugin decides), 0 (keep forever, whatever the
plugin says) or a number of days. Setting and reading overrides is for admins: the caller
checks (`require_retention_admin`); what is shown is per team, from the registry's tenants.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import DateTime, Integer, String, select
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base, session_scope, utcnow
from core.errors import InvalidRequest
from core.identity import Principal
from core.rbac import authorize
from core.tenancy import Tenant

FIELDS = ("conversation_days", "prompt_text_days")
KEEP = 0  # an override that keeps forever
MAX_DAYS = 36500


class RetentionOverrideRow(Base):
    """An admin's override of one team's retention (created by migration 0008)."""

    __tablename__ = "retention_policies"
    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    conversation_days: Mapped[int | None] = mapped_column(Integer)
    prompt_text_days: Mapped[int | None] = mapped_column(Integer)
    updated_by: Mapped[str] = mapped_column(String(255))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class RetentionPolicy:
    """What one team keeps: days per kind (None keeps forever) and where each came from."""

    tenant_id: str
    conversation_days: int | None
    prompt_text_days: int | None
    conversation_source: str  # "plugin" or "admin"
    prompt_text_source: str

    @property
    def active(self) -> bool:
        """Whether anything of this team is ever removed."""
        return self.conversation_days is not None or self.prompt_text_days is not None

    def as_json(self) -> dict[str, object]:
        """A JSON-ready dict (one line of `retention show --json`)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def require_retention_admin(principal: Principal) -> None:
    """Retention is set by global admins (PermissionDenied otherwise)."""
    authorize(principal, None, "view_admin")


def parse_days(flag: str, value: str) -> int | None:
    """An option's value: days (`30`), `keep` (forever) or `default` (the plugin's: None)."""
    text = value.strip().lower()
    if text == "default":
        return None
    if text in ("keep", "forever", "off"):
        return KEEP
    if not text.isdigit() or not 1 <= int(text) <= MAX_DAYS:
        raise InvalidRequest(
            f"{flag} takes days from 1 to {MAX_DAYS}, 'keep' or 'default', not '{value}'."
        )
    return int(text)


def _effective(plugin: int | None, override: int | None) -> tuple[int | None, str]:
    if override is None:
        return plugin, "plugin"
    return (None if override == KEEP else override), "admin"


def policies(db_url: str, tenants: Iterable[Tenant]) -> list[RetentionPolicy]:
    """The policy in effect for each of `tenants`, in their order."""
    teams = list(tenants)
    ids = [t.id for t in teams]
    with session_scope(db_url) as session:
        rows = session.scalars(
            select(RetentionOverrideRow).where(RetentionOverrideRow.tenant_id.in_(ids))
        )
        overrides = {r.tenant_id: (r.conversation_days, r.prompt_text_days) for r in rows}
    found = []
    for tenant in teams:
        conv_override, text_override = overrides.get(tenant.id, (None, None))
        conv_days, conv_source = _effective(tenant.retention_conversation_days, conv_override)
        text_days, text_source = _effective(tenant.retention_prompt_text_days, text_override)
        found.append(RetentionPolicy(tenant.id, conv_days, text_days, conv_source, text_source))
    return found


def set_override(
    db_url: str, tenant: Tenant, changes: Mapping[str, int | None], *, actor: str
) -> RetentionPolicy:
    """Override the given fields (None: back to the plugin's); return the policy in effect."""
    if not changes:
        raise InvalidRequest("Give --conversations and/or --prompt-text.")
    for name, value in changes.items():
        if name not in FIELDS or (value is not None and not 0 <= value <= MAX_DAYS):
            raise InvalidRequest(f"Not a retention setting: {name}={value!r}.")
    with session_scope(db_url) as session:
        row = session.get(RetentionOverrideRow, tenant.id)
        values = {name: getattr(row, name) if row else None for name in FIELDS}
        values.update(changes)
        if all(v is None for v in values.values()):
            if row is not None:
                session.delete(row)  # nothing overridden any more: the plugin decides
        else:
            if row is None:
                row = RetentionOverrideRow(tenant_id=tenant.id)
                session.add(row)
            row.conversation_days = values["conversation_days"]
            row.prompt_text_days = values["prompt_text_days"]
            row.updated_by, row.updated_at = actor, utcnow()
    return policies(db_url, [tenant])[0]
