"""Tenant-scoped API keys (`tlm_...`): created once, stored as a hash, expiring, revocable.

A key is `tlm_<id>_<secret>` with 256 bits of randomness; only its SHA-256 is stored (a
high-entropy secret needs no slow hash), so the database never holds a usable key. Each key is
bound to one tenant and one role (`member` or `editor`). Who may create keys is decided by
the caller with `authorize(..., "manage_keys")`; callers audit what they do.

What a caller may SEE is decided here, in the query: `visible_keys` and `revoke_key(...,
principal=...)` take the principal and only ever read the keys of teams it may manage (every
team for an admin). The UI once answered a sales editor's key creation with every team's key
list (issue 12, item 2): filtering after the fact is what went missing there.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import DateTime, Select, String, select
from sqlalchemy.orm import Mapped, mapped_column

from core.auth.sessions import aware, utcnow
from core.config import Settings
from core.db import Base, session_scope
from core.errors import InvalidRequest, NotAuthenticated, NotFound
from core.identity import Principal, Role
from core.rbac import is_allowed

KEY_PREFIX = "tlm_"
_KEY_RE = re.compile(r"^tlm_([a-f0-9]{12})_[A-Za-z0-9_-]{43}$")
_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# Old UI wording: a "chat" scope is the member role.
_SCOPE_ALIASES = {"chat": "member"}
LAST_USED_RESOLUTION = timedelta(minutes=1)  # write last_used_at at most this often
# Not `team_admin`: a key is a program's credential, and a leaked one must not read the
# team's audit log or usage, nor set its members' budgets.
KEY_ROLES: tuple[Role, ...] = ("member", "editor")


class ApiKeyRow(Base):
    """One API key (hash only)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    role: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class ApiKeyInfo:
    """What may be shown about a key (never its secret)."""

    id: str
    tenant_id: str
    role: Role
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    @property
    def scope(self) -> str:
        """The key's role (older name)."""
        return self.role

    @property
    def active(self) -> bool:
        """Neither revoked nor expired."""
        expired = self.expires_at is not None and self.expires_at <= utcnow()
        return self.revoked_at is None and not expired


@dataclass(frozen=True)
class CreatedKey:
    """A new key: `secret` is the only copy, show it once."""

    key: ApiKeyInfo
    secret: str


def hash_key(secret: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `2w`, `90m`, `45s` -> timedelta (InvalidRequest otherwise)."""
    match = _DURATION_RE.match(text)
    if not match or int(match.group(1)) <= 0:
        raise InvalidRequest(f"'{text}' is not a duration like 30d, 12h, 2w or 90m.")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def _info(row: ApiKeyRow) -> ApiKeyInfo:
    return ApiKeyInfo(
        id=row.id,
        tenant_id=row.tenant_id,
        role=cast(Role, row.role),
        created_by=row.created_by,
        created_at=aware(row.created_at),
        expires_at=aware(row.expires_at) if row.expires_at else None,
        revoked_at=aware(row.revoked_at) if row.revoked_at else None,
        last_used_at=aware(row.last_used_at) if row.last_used_at else None,
    )


def _role(role: str | None, scope: str | None) -> Role:
    value = role or _SCOPE_ALIASES.get(scope or "", scope) or "member"
    if value not in KEY_ROLES:
        raise InvalidRequest(f"A key's role must be one of {', '.join(KEY_ROLES)}.")
    return cast(Role, value)


def create_key(
    settings: Settings,
    *,
    tenant_id: str,
    created_by: str,
    role: str | None = None,
    scope: str | None = None,
    expires_in: timedelta | None = None,
    expires_in_days: int | None = None,
) -> CreatedKey:
    """Create a key for one tenant; the caller has authorized `manage_keys` on it."""
    if expires_in is None and expires_in_days is not None:
        expires_in = timedelta(days=expires_in_days)
    if expires_in is not None and expires_in <= timedelta(0):
        raise InvalidRequest("A key's lifetime must be positive.")
    key_id = secrets.token_hex(6)
    secret = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    now = utcnow()
    row = ApiKeyRow(
        id=key_id,
        tenant_id=tenant_id,
        role=_role(role, scope),
        key_hash=hash_key(secret),
        created_by=created_by,
        created_at=now,
        expires_at=now + expires_in if expires_in is not None else None,
        revoked_at=None,
        last_used_at=None,
    )
    with session_scope(settings.resolved_database_url) as db:
        db.add(row)
        info = _info(row)
    return CreatedKey(key=info, secret=secret)


def list_keys(settings: Settings, tenant_id: str | None = None) -> list[ApiKeyInfo]:
    """Every team's keys (only `tenant_id`'s when given), newest first, for no one in particular.

    Anything shown to a caller goes through `visible_keys` instead.
    """
    query = select(ApiKeyRow).order_by(ApiKeyRow.created_at.desc())
    if tenant_id is not None:
        query = query.where(ApiKeyRow.tenant_id == tenant_id)
    with session_scope(settings.resolved_database_url) as db:
        return [_info(row) for row in db.scalars(query)]


def managed_tenants(principal: Principal) -> list[str] | None:
    """The tenants whose keys `principal` may manage; None means every tenant (an admin)."""
    if principal.is_admin:
        return None
    return sorted(t for t in principal.tenant_roles if is_allowed(principal, t, "manage_keys"))


def _visible_to(query: Select[ApiKeyRow], principal: Principal) -> Select[ApiKeyRow]:
    # In SQL, so that no caller can forget the filter: a member or an API key sees nothing.
    tenants = managed_tenants(principal)
    return query if tenants is None else query.where(ApiKeyRow.tenant_id.in_(tenants))


def visible_keys(
    settings: Settings, principal: Principal, tenant_id: str | None = None
) -> list[ApiKeyInfo]:
    """The keys of the teams `principal` may manage, newest first; only `tenant_id`'s if given."""
    query = _visible_to(select(ApiKeyRow).order_by(ApiKeyRow.created_at.desc()), principal)
    if tenant_id is not None:
        query = query.where(ApiKeyRow.tenant_id == tenant_id)
    with session_scope(settings.resolved_database_url) as db:
        return [_info(row) for row in db.scalars(query)]


def revoke_key(
    settings: Settings,
    key_id: str,
    tenant_id: str | None = None,
    *,
    principal: Principal | None = None,
) -> ApiKeyInfo:
    """Revoke a key (idempotent).

    With `tenant_id`, a key of another tenant is NotFound; with `principal`, so is a key of a
    team it may not manage (the same answer as an unknown id: no oracle for other teams' ids).
    """
    query = select(ApiKeyRow).where(ApiKeyRow.id == key_id)
    if principal is not None:
        query = _visible_to(query, principal)
    with session_scope(settings.resolved_database_url) as db:
        row = db.scalars(query).first()
        if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
            raise NotFound(f"No API key with id '{key_id}'.")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
        return _info(row)


def verify_key(settings: Settings, secret: str) -> ApiKeyInfo:
    """The key named by `secret`; NotAuthenticated if malformed, unknown, revoked or expired."""
    if not _KEY_RE.match(secret):
        raise NotAuthenticated("This API key is not valid.")
    digest = hash_key(secret)
    with session_scope(settings.resolved_database_url) as db:
        row = db.scalars(select(ApiKeyRow).where(ApiKeyRow.key_hash == digest)).first()
        if row is None or not hmac.compare_digest(row.key_hash, digest):
            raise NotAuthenticated("This API key is not valid.")
        info = _info(row)
        if info.revoked_at is not None:
            raise NotAuthenticated("This API key has been revoked.")
        if not info.active:
            raise NotAuthenticated("This API key has expired.")
        now = utcnow()
        if info.last_used_at is None or now - info.last_used_at > LAST_USED_RESOLUTION:
            row.last_used_at = now
    return info


def principal_for_key(info: ApiKeyInfo) -> Principal:
    """The principal an API key acts as: its tenant and role, nothing global."""
    return Principal(
        subject=f"key:{info.id}",
        email=None,
        kind="api_key",
        tenant_roles={info.tenant_id: info.role},
        global_roles=frozenset(),
        name=f"API key {info.id}",
    )
