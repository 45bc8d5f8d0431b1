"""The document registry: one SQL row per stored document of a tenant.

Vectors live in the tenant's own Chroma store and the encrypted original under the tenant's
data dir; this table is what lists, de-duplicates (same sha256 in one tenant) and deletes
them. Every query here takes the tenant id: there is no lookup by document id alone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import BigInteger, DateTime, Integer, String, UniqueConstraint, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.db import Base


class DocumentRow(Base):
    """A document of one tenant (created by migration 0002)."""

    __tablename__ = "documents"
    __table_args__ = (UniqueConstraint("tenant_id", "sha256", name="uq_documents_tenant_sha256"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    chunks: Mapped[int] = mapped_column(Integer)
    uploaded_by: Mapped[str] = mapped_column(String(255))
    uploaded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def find_by_sha(session: Session, tenant_id: str, sha256: str) -> DocumentRow | None:
    """This tenant's document with this content, if any."""
    stmt = select(DocumentRow).where(
        DocumentRow.tenant_id == tenant_id, DocumentRow.sha256 == sha256
    )
    return session.scalars(stmt).first()


def get_document(session: Session, tenant_id: str, document_id: str) -> DocumentRow | None:
    """This tenant's document with this id (None if it belongs to nobody or someone else)."""
    stmt = select(DocumentRow).where(
        DocumentRow.tenant_id == tenant_id, DocumentRow.id == document_id
    )
    return session.scalars(stmt).first()


def list_documents(session: Session, tenant_id: str) -> list[DocumentRow]:
    """This tenant's documents, newest first."""
    stmt = (
        select(DocumentRow)
        .where(DocumentRow.tenant_id == tenant_id)
        .order_by(DocumentRow.uploaded_at.desc(), DocumentRow.id)
    )
    return list(session.scalars(stmt))


def stored_bytes(session: Session, tenant_id: str) -> int:
    """The total size of this tenant's stored originals (what its quota counts)."""
    stmt = select(func.coalesce(func.sum(DocumentRow.size), 0)).where(
        DocumentRow.tenant_id == tenant_id
    )
    return int(session.scalar(stmt) or 0)


def registered_ids(session: Session, tenant_id: str, document_ids: set[str]) -> set[str]:
    """Those of `document_ids` that are this tenant's registered documents."""
    if not document_ids:
        return set()
    stmt = select(DocumentRow.id).where(
        DocumentRow.tenant_id == tenant_id, DocumentRow.id.in_(sorted(document_ids))
    )
    return set(session.scalars(stmt))


def document_set_version(session: Session, tenant_id: str) -> str:
    """A version of this tenant's document set: changes with every upload and every delete.

    A digest of the registered ids and contents, not a stored counter: a row is what makes a
    document visible to retrieval (core/knowledge/retrieval.py), so the version cannot drift
    from what retrieval sees, on any replica. The response cache keys on it.
    """
    stmt = (
        select(DocumentRow.id, DocumentRow.sha256)
        .where(DocumentRow.tenant_id == tenant_id)
        .order_by(DocumentRow.id)
    )
    digest = hashlib.sha256(tenant_id.encode())
    for document_id, sha256 in session.execute(stmt):
        digest.update(f"\n{document_id}:{sha256}".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class IngestOutcome:
    """What happened to one file of an ingest batch."""

    filename: str
    status: Literal["indexed", "duplicate", "refused"]
    chunks: int = 0
    document_id: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class DocumentInfo:
    """One document of a tenant, as listed."""

    id: str
    tenant_id: str
    filename: str
    sha256: str
    size: int
    chunks: int
    uploaded_by: str
    uploaded_at: datetime


def document_info(row: DocumentRow) -> DocumentInfo:
    """The listing record of a registry row."""
    return DocumentInfo(
        id=row.id,
        tenant_id=row.tenant_id,
        filename=row.filename,
        sha256=row.sha256,
        size=row.size,
        chunks=row.chunks,
        uploaded_by=row.uploaded_by,
        # SQLite hands back naive datetimes; they were written in UTC.
        uploaded_at=row.uploaded_at.replace(tzinfo=row.uploaded_at.tzinfo or UTC),
    )
