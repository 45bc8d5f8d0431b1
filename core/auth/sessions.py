"""Server-side sign-in sessions: the cookie holds only a random secret, the row the rest.

Because every request looks its session up here, signing out (or an admin revoking a session)
ends it everywhere: a copy of the old cookie names a revoked row and is refused. The row id is
the SHA-256 of the secret, so a database reader cannot forge cookies; the IdP tokens kept for
group refresh and RP-initiated logout are encrypted with a key derived from the master key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import DateTime, String, Text, select, update
from sqlalchemy.orm import Mapped, mapped_column

from core import crypto
from core.config import Settings
from core.db import Base, session_scope, utcnow
from core.errors import IngestionError

_TOKENS_SCOPE = "_auth_sessions"  # key-derivation label, not a tenant


class AuthSessionRow(Base):
    """One signed-in browser session."""

    __tablename__ = "auth_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject: Mapped[str] = mapped_column(String(255), index=True)
    email: Mapped[str | None] = mapped_column(String(320))
    name: Mapped[str | None] = mapped_column(String(255))
    groups_json: Mapped[str] = mapped_column(Text)
    tokens_blob: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    groups_refreshed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class SessionRecord:
    """A live session as the app uses it (tokens decrypted)."""

    id: str
    subject: str
    email: str | None
    name: str | None
    groups: list[str]
    tokens: dict[str, Any]
    expires_at: datetime
    groups_refreshed_at: datetime


def aware(value: datetime) -> datetime:
    """SQLite returns naive datetimes: they are UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def session_id_of(secret: str) -> str:
    """The row id of a cookie secret."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def csrf_token(settings: Settings, secret: str, purpose: str = "logout") -> str:
    """The CSRF token of one session for one form (HMAC: nothing to store, dies with it).

    Only the app's own pages can read it (the session secret never leaves the cookie, and
    another site cannot read our pages), so a form posted from elsewhere cannot carry it.
    """
    key = hashlib.sha256(f"csrf:{settings.secret_key}".encode()).digest()
    message = f"{purpose}:{session_id_of(secret)}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def csrf_token_ok(settings: Settings, secret: str, token: str, purpose: str = "logout") -> bool:
    """Whether `token` is this session's CSRF token for `purpose` (constant time)."""
    return hmac.compare_digest(csrf_token(settings, secret, purpose), token)


def _key(settings: Settings) -> bytes:
    return crypto.tenant_key(crypto.master_key(settings), _TOKENS_SCOPE)


def _seal(settings: Settings, row_id: str, tokens: dict[str, Any]) -> str:
    blob = crypto.encrypt(_key(settings), _TOKENS_SCOPE, row_id, json.dumps(tokens).encode())
    return base64.b64encode(blob).decode("ascii")


def _open(settings: Settings, row_id: str, sealed: str | None) -> dict[str, Any]:
    if not sealed:
        return {}
    try:
        raw = crypto.decrypt(_key(settings), _TOKENS_SCOPE, row_id, base64.b64decode(sealed))
    except (IngestionError, ValueError):
        return {}  # wrong master key: the session still works, group refresh will end it
    data = json.loads(raw)
    return data if isinstance(data, dict) else {}


def create_session(
    settings: Settings,
    *,
    subject: str,
    email: str | None,
    name: str | None,
    groups: list[str],
    tokens: dict[str, Any],
) -> str:
    """Store a new session and return its secret (for the cookie; not stored)."""
    secret = secrets.token_urlsafe(32)
    row_id = session_id_of(secret)
    now = utcnow()
    row = AuthSessionRow(
        id=row_id,
        subject=subject,
        email=email,
        name=name,
        groups_json=json.dumps(groups),
        tokens_blob=_seal(settings, row_id, tokens),
        created_at=now,
        expires_at=now + timedelta(seconds=settings.session_max_age_seconds),
        groups_refreshed_at=now,
        revoked_at=None,
    )
    with session_scope(settings.resolved_database_url) as db:
        db.add(row)
    return secret


def load_session(settings: Settings, secret: str) -> SessionRecord | None:
    """The live session for a cookie secret; None if unknown, revoked or expired."""
    row_id = session_id_of(secret)
    with session_scope(settings.resolved_database_url) as db:
        row = db.get(AuthSessionRow, row_id)
        if row is None or row.revoked_at is not None or aware(row.expires_at) <= utcnow():
            return None
        return SessionRecord(
            id=row.id,
            subject=row.subject,
            email=row.email,
            name=row.name,
            groups=list(json.loads(row.groups_json)),
            tokens=_open(settings, row.id, row.tokens_blob),
            expires_at=aware(row.expires_at),
            groups_refreshed_at=aware(row.groups_refreshed_at),
        )


def update_groups(
    settings: Settings, row_id: str, groups: list[str], tokens: dict[str, Any] | None = None
) -> None:
    """Record freshly read groups (and new IdP tokens after a refresh)."""
    values: dict[str, Any] = {"groups_json": json.dumps(groups), "groups_refreshed_at": utcnow()}
    if tokens is not None:
        values["tokens_blob"] = _seal(settings, row_id, tokens)
    with session_scope(settings.resolved_database_url) as db:
        db.execute(update(AuthSessionRow).where(AuthSessionRow.id == row_id).values(**values))


def revoke_session(settings: Settings, row_id: str) -> None:
    """End a session everywhere (sign-out, IdP refused the refresh)."""
    with session_scope(settings.resolved_database_url) as db:
        db.execute(
            update(AuthSessionRow)
            .where(AuthSessionRow.id == row_id, AuthSessionRow.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )


def sessions_of(settings: Settings, subject: str) -> list[str]:
    """Ids of the live sessions of `subject` (admin tooling, tests)."""
    with session_scope(settings.resolved_database_url) as db:
        rows = db.scalars(
            select(AuthSessionRow.id).where(
                AuthSessionRow.subject == subject, AuthSessionRow.revoked_at.is_(None)
            )
        )
        return list(rows)
