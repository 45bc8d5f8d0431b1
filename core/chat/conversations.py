"""Saved chat conversations, per user AND per team (tenant).

A conversation belongs to one owner (the IdP subject) inside one tenant. Every function takes
both and every query filters by both, so a conversation id alone never opens anything: an id
from team A asked for under team B, or by another user, is simply `NotFound` (we do not say
whether it exists). History lives here, in the database, never in the browser.

Retention (core/retention) deletes a team's conversations idle for longer than its policy
says (`delete_idle_conversations`); ratings of answers (core/chat/feedback.py) go with them,
by the foreign keys' ON DELETE CASCADE.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, ForeignKey, Index, Integer, String, Text, delete, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.db import Base, session_scope, utcnow
from core.errors import InvalidRequest, NotFound

TITLE_MAX = 80
MESSAGE_MAX = 100_000


class ConversationRow(Base):
    """One conversation: who owns it, in which tenant, its title."""

    __tablename__ = "conversations"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner_sub: Mapped[str] = mapped_column(String(255), nullable=False)
    tenant_id: Mapped[str] = mapped_column(String(64), nullable=False)
    title: Mapped[str] = mapped_column(String(TITLE_MAX), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    __table_args__ = (Index("ix_conversations_owner_tenant", "owner_sub", "tenant_id"),)


class MessageRow(Base):
    """One message of a conversation (sources kept as JSON for the assistant's answers)."""

    __tablename__ = "conversation_messages"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False, index=True
    )
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    sources_json: Mapped[str] = mapped_column(Text, nullable=False, default="[]")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


@dataclass(frozen=True)
class ConversationSummary:
    """A conversation as listed in the sidebar."""

    id: str
    title: str
    tenant_id: str
    updated_at: datetime


@dataclass(frozen=True)
class StoredMessage:
    """A message as saved: role, text and (for answers) the sources shown under it.

    `id` and `created_at` are set on messages read back (None on messages being saved).
    """

    role: str
    content: str
    sources: list[dict[str, Any]] = field(default_factory=list)
    id: int | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class Conversation:
    """A conversation with its messages, oldest first."""

    id: str
    title: str
    tenant_id: str
    messages: list[StoredMessage]
    created_at: datetime | None = None
    updated_at: datetime | None = None


def _clean_title(title: str) -> str:
    title = " ".join(title.split())[:TITLE_MAX]
    if not title:
        raise InvalidRequest("A conversation title cannot be empty.")
    return title


def _owned(owner_sub: str, tenant_id: str, conversation_id: str) -> Any:
    # The one filter every read and write goes through: id AND owner AND tenant.
    return (
        (ConversationRow.id == conversation_id)
        & (ConversationRow.owner_sub == owner_sub)
        & (ConversationRow.tenant_id == tenant_id)
    )


def create_conversation(db_url: str, owner_sub: str, tenant_id: str, title: str) -> str:
    """Start a conversation for `owner_sub` in `tenant_id`; return its id."""
    now = utcnow()
    conversation_id = str(uuid.uuid4())
    with session_scope(db_url) as session:
        session.add(
            ConversationRow(
                id=conversation_id,
                owner_sub=owner_sub,
                tenant_id=tenant_id,
                title=_clean_title(title or "New conversation"),
                created_at=now,
                updated_at=now,
            )
        )
    return conversation_id


def list_conversations(
    db_url: str, owner_sub: str, tenant_id: str, limit: int = 100
) -> list[ConversationSummary]:
    """This user's conversations in this tenant, most recently used first."""
    query = (
        select(ConversationRow)
        .where(ConversationRow.owner_sub == owner_sub, ConversationRow.tenant_id == tenant_id)
        .order_by(ConversationRow.updated_at.desc())
        .limit(limit)
    )
    with session_scope(db_url) as session:
        rows = session.scalars(query).all()
        return [ConversationSummary(r.id, r.title, r.tenant_id, r.updated_at) for r in rows]


def get_conversation(
    db_url: str, owner_sub: str, tenant_id: str, conversation_id: str
) -> Conversation:
    """Open one conversation; `NotFound` unless it is this user's, in this tenant."""
    with session_scope(db_url) as session:
        row = session.scalars(
            select(ConversationRow).where(_owned(owner_sub, tenant_id, conversation_id))
        ).first()
        if row is None:
            raise NotFound("This conversation does not exist.")
        messages = session.scalars(
            select(MessageRow).where(MessageRow.conversation_id == row.id).order_by(MessageRow.id)
        ).all()
        return Conversation(
            id=row.id,
            title=row.title,
            tenant_id=row.tenant_id,
            messages=[
                StoredMessage(m.role, m.content, json.loads(m.sources_json), m.id, m.created_at)
                for m in messages
            ],
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


def find_answer(
    session: Session, owner_sub: str, tenant_id: str, conversation_id: str, message_id: int
) -> MessageRow | None:
    """The assistant message `message_id` of this user's conversation in this tenant, or None.

    For code that writes beside a message in the caller's transaction (core/chat/feedback.py).
    """
    query = (
        select(MessageRow)
        .join(ConversationRow, MessageRow.conversation_id == ConversationRow.id)
        .where(_owned(owner_sub, tenant_id, conversation_id))
        .where(MessageRow.id == message_id, MessageRow.role == "assistant")
    )
    return session.scalars(query).first()


def append_messages(
    db_url: str,
    owner_sub: str,
    tenant_id: str,
    conversation_id: str,
    messages: list[StoredMessage],
) -> None:
    """Add messages to a conversation of this user in this tenant (`NotFound` otherwise)."""
    now = utcnow()
    with session_scope(db_url) as session:
        result = session.execute(
            update(ConversationRow)
            .where(_owned(owner_sub, tenant_id, conversation_id))
            .values(updated_at=now)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise NotFound("This conversation does not exist.")
        for message in messages:
            if message.role not in ("user", "assistant"):
                raise InvalidRequest(f"Unknown message role {message.role!r}.")
            session.add(
                MessageRow(
                    conversation_id=conversation_id,
                    role=message.role,
                    content=message.content[:MESSAGE_MAX],
                    sources_json=json.dumps(message.sources),
                    created_at=now,
                )
            )


def rename_conversation(
    db_url: str, owner_sub: str, tenant_id: str, conversation_id: str, title: str
) -> None:
    """Rename a conversation of this user in this tenant (`NotFound` otherwise)."""
    clean = _clean_title(title)
    with session_scope(db_url) as session:
        result = session.execute(
            update(ConversationRow)
            .where(_owned(owner_sub, tenant_id, conversation_id))
            .values(title=clean)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise NotFound("This conversation does not exist.")


def delete_conversation(db_url: str, owner_sub: str, tenant_id: str, conversation_id: str) -> None:
    """Delete a conversation and its messages (`NotFound` unless this user's, in this tenant)."""
    with session_scope(db_url) as session:
        owned = session.scalars(
            select(ConversationRow.id).where(_owned(owner_sub, tenant_id, conversation_id))
        ).first()
        if owned is None:
            raise NotFound("This conversation does not exist.")
        # Messages first: SQLite enforces the foreign key but does not cascade without it.
        session.execute(delete(MessageRow).where(MessageRow.conversation_id == owned))
        session.execute(delete(ConversationRow).where(ConversationRow.id == owned))


def delete_idle_conversations(db_url: str, tenant_id: str, before: datetime) -> int:
    """Delete this tenant's conversations last used before `before`; return how many.

    Idle, not created, before the cutoff: a conversation still in use is never cut off in the
    middle. Messages and their ratings go with it (ON DELETE CASCADE).
    """
    with session_scope(db_url) as session:
        idle = select(ConversationRow.id).where(
            ConversationRow.tenant_id == tenant_id, ConversationRow.updated_at < before
        )
        ids = list(session.scalars(idle))
        for start in range(0, len(ids), 500):  # bounded IN lists on every backend
            batch = ids[start : start + 500]
            session.execute(delete(MessageRow).where(MessageRow.conversation_id.in_(batch)))
            session.execute(delete(ConversationRow).where(ConversationRow.id.in_(batch)))
    return len(ids)
