"""Originals in the SQL database: table `document_originals` (migration 0009).

Every replica reads the same rows, so any replica can re-index a team. Rows are keyed by
(tenant id, document id) and every query names both: there is no lookup by document id
alone. The blob is the encrypted original (core/crypto.py: the team's own key, bound to the
tenant and document), so a row read under another team's id would not decrypt either.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from sqlalchemy import BigInteger, DateTime, LargeBinary, String, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.db import Base, utcnow


class OriginalRow(Base):
    """The encrypted original of one tenant's document (created by migration 0009)."""

    __tablename__ = "document_originals"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    document_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    blob: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(BigInteger)
    stored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SqlOriginals:
    """Encrypted originals as rows of the registry's database, in the caller's transaction."""

    backend: Literal["database"] = "database"

    def put(self, session: Session, tenant_id: str, document_id: str, blob: bytes) -> None:
        """Add (or replace) the row; it commits with the caller's session."""
        session.merge(
            OriginalRow(
                tenant_id=tenant_id,
                document_id=document_id,
                blob=blob,
                size=len(blob),
                stored_at=utcnow(),
            )
        )
        session.flush()  # a failure surfaces here, inside the caller's try

    def get(self, session: Session, tenant_id: str, document_id: str) -> bytes | None:
        """The blob of this tenant's document, None if it has none."""
        stmt = select(OriginalRow.blob).where(
            OriginalRow.tenant_id == tenant_id, OriginalRow.document_id == document_id
        )
        blob = session.scalar(stmt)
        return bytes(blob) if blob is not None else None

    def delete(self, session: Session, tenant_id: str, document_id: str) -> None:
        """Delete the row, if any (with the caller's commit)."""
        session.execute(
            delete(OriginalRow).where(
                OriginalRow.tenant_id == tenant_id, OriginalRow.document_id == document_id
            )
        )

    def document_ids(self, session: Session, tenant_id: str) -> set[str]:
        """The ids of this tenant's stored originals."""
        stmt = select(OriginalRow.document_id).where(OriginalRow.tenant_id == tenant_id)
        return set(session.scalars(stmt))
