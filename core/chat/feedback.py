"""Ratings of answers (thumbs up or down, an optional comment), tied to what was retrieved.

Only the conversation's owner rates its answers: every write goes through
`conversations.find_answer` (message id AND conversation id AND owner AND tenant), so a message
id of another user or team is `NotFound`, worded as for an id that does not exist. A rating
keeps the document ids the answer cited (its saved sources), so a team admin can see which
documents the badly rated answers stood on (`document_feedback`). One rating per answer:
rating again replaces it, clearing it deletes it. The audit event (`feedback`) is the
caller's to write: only the caller knows the request (core/ui/feedback.py).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import DateTime, ForeignKey, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.chat.conversations import MessageRow, find_answer
from core.db import Base, session_scope, utcnow
from core.errors import InvalidRequest, NotFound

Rating = Literal["up", "down"]
RATINGS: tuple[str, ...] = ("up", "down")
COMMENT_MAX = 2000


class FeedbackRow(Base):
    """One rating of one answer (created by migration 0008)."""

    __tablename__ = "conversation_feedback"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False
    )
    message_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("conversation_messages.id", ondelete="CASCADE"), unique=True
    )
    tenant_id: Mapped[str] = mapped_column(String(64), nullable=False)
    owner_sub: Mapped[str] = mapped_column(String(255), nullable=False)
    rating: Mapped[str] = mapped_column(String(8), nullable=False)
    comment: Mapped[str | None] = mapped_column(Text)
    document_ids: Mapped[str] = mapped_column(Text, nullable=False)  # JSON list
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


@dataclass(frozen=True)
class Feedback:
    """A rating as stored, with the sources of the answer it rates (for the audit event)."""

    message_id: int
    rating: Rating | None  # None: cleared
    comment: str | None
    sources: list[dict[str, Any]]

    @property
    def document_ids(self) -> list[str]:
        """The cited documents, each once, in the order the answer showed them."""
        return list(dict.fromkeys(str(s.get("document_id", "")) for s in self.sources))

    def chunk_refs(self) -> list[str]:
        """`document id@location` of each cited chunk (the audit row's detail)."""
        return [f"{s.get('document_id', '')}@{s.get('location', '')}" for s in self.sources]


@dataclass(frozen=True)
class DocumentFeedback:
    """How the rated answers that cited one document were rated."""

    document_id: str
    filename: str
    rated: int
    down: int

    @property
    def down_share(self) -> float:
        """The share of those answers rated down (0 to 1)."""
        return self.down / self.rated if self.rated else 0.0


def parse_rating(value: object) -> Rating | None:
    """A rating from the page: "up", "down", or None/"" to clear (InvalidRequest otherwise)."""
    if value in (None, ""):
        return None
    if value not in RATINGS:
        raise InvalidRequest("A rating is thumbs up or thumbs down.")
    return "up" if value == "up" else "down"


def rate_answer(
    db_url: str,
    owner_sub: str,
    tenant_id: str,
    conversation_id: str,
    message_id: int,
    rating: Rating | None,
) -> Feedback:
    """Rate (or with None, un-rate) an answer of this user's conversation in this tenant.

    A new rating keeps no comment of the one it replaces: the comment was about that rating.
    """
    with session_scope(db_url) as session:
        answer = _answer(session, owner_sub, tenant_id, conversation_id, message_id)
        sources: list[dict[str, Any]] = json.loads(answer.sources_json)
        row = _rating_row(session, answer.id)
        if rating is None:
            if row is not None:
                session.delete(row)
            return Feedback(answer.id, None, None, sources)
        now = utcnow()
        if row is None:
            row = FeedbackRow(
                conversation_id=conversation_id,
                message_id=answer.id,
                tenant_id=tenant_id,
                owner_sub=owner_sub,
                created_at=now,
            )
            session.add(row)
        elif row.rating != rating:
            row.comment = None
        row.rating, row.updated_at = rating, now
        row.document_ids = json.dumps([str(s.get("document_id", "")) for s in sources])
        return Feedback(answer.id, rating, row.comment, sources)


def comment_answer(
    db_url: str,
    owner_sub: str,
    tenant_id: str,
    conversation_id: str,
    message_id: int,
    comment: str,
) -> Feedback:
    """Attach a comment to this user's rating of an answer (rate it first: InvalidRequest)."""
    text = (comment or "").strip()[:COMMENT_MAX]
    if not text:
        raise InvalidRequest("Type a comment first.")
    with session_scope(db_url) as session:
        answer = _answer(session, owner_sub, tenant_id, conversation_id, message_id)
        row = _rating_row(session, answer.id)
        if row is None:
            raise InvalidRequest("Rate the answer (thumbs up or down) before commenting on it.")
        row.comment, row.updated_at = text, utcnow()
        rating = parse_rating(row.rating)
        return Feedback(answer.id, rating, text, json.loads(answer.sources_json))


def ratings_of(
    db_url: str, owner_sub: str, tenant_id: str, conversation_id: str
) -> dict[int, tuple[str, str | None]]:
    """Message id -> (rating, comment) of this user's conversation in this tenant."""
    query = select(FeedbackRow).where(
        FeedbackRow.conversation_id == conversation_id,
        FeedbackRow.owner_sub == owner_sub,
        FeedbackRow.tenant_id == tenant_id,
    )
    with session_scope(db_url) as session:
        return {r.message_id: (r.rating, r.comment) for r in session.scalars(query)}


def document_feedback(db_url: str, tenant_id: str) -> list[DocumentFeedback]:
    """Per document of this tenant: rated answers that cited it, and how many were rated down.

    Most rated down first. Reads only this tenant's ratings (the WHERE is the scope); file
    names come from the rated answers' own sources.
    """
    query = (
        select(FeedbackRow.rating, FeedbackRow.document_ids, MessageRow.sources_json)
        .join(MessageRow, MessageRow.id == FeedbackRow.message_id)
        .where(FeedbackRow.tenant_id == tenant_id)
    )
    rated: dict[str, int] = defaultdict(int)
    down: dict[str, int] = defaultdict(int)
    names: dict[str, str] = {}
    with session_scope(db_url) as session:
        for rating, document_ids, sources_json in session.execute(query):
            for source in json.loads(sources_json):
                document_id = str(source.get("document_id", ""))
                names.setdefault(document_id, str(source.get("filename") or document_id))
            for document_id in dict.fromkeys(json.loads(document_ids)):
                rated[document_id] += 1
                down[document_id] += rating == "down"
    stats = [DocumentFeedback(d, names.get(d, d), rated[d], down[d]) for d in rated]
    return sorted(stats, key=lambda s: (-s.down, -s.down_share, s.filename))


def _answer(
    session: Session, owner_sub: str, tenant_id: str, conversation_id: str, message_id: int
) -> MessageRow:
    answer = find_answer(session, owner_sub, tenant_id, conversation_id, message_id)
    if answer is None:
        raise NotFound("This answer does not exist.")
    return answer


def _rating_row(session: Session, message_id: int) -> FeedbackRow | None:
    query = select(FeedbackRow).where(FeedbackRow.message_id == message_id)
    return session.scalars(query).first()
