"""Where the encrypted originals are kept: one small interface, one module per backend.

- `originals_files`: one file per document under the data dir (one machine; the default
  with SQLite).
- `originals_sql`: a table of the SQL database, so that every replica reads them and
  `tenantllm reindex` on any replica can rebuild a team's vectors (the default with
  PostgreSQL).

A backend stores bytes that are already encrypted with the team's own key and bound to the
team and document (core/crypto.py, done by `tenant_files.TenantFiles`); every call names the
tenant id, and nothing looks an original up by document id alone. Every call also takes the
registry's session: in the SQL backend an original commits, or rolls back, with its
registry row.
"""

from __future__ import annotations

from typing import Literal, Protocol

from sqlalchemy.orm import Session

from core.config import Settings

Backend = Literal["database", "files"]


class OriginalStore(Protocol):
    """Encrypted originals, addressed by (tenant id, document id)."""

    @property
    def backend(self) -> Backend:
        """Which backend this is (the backends import nothing of this module: no cycle)."""

    def put(self, session: Session, tenant_id: str, document_id: str, blob: bytes) -> None:
        """Store (or replace) the blob of this tenant's document."""

    def get(self, session: Session, tenant_id: str, document_id: str) -> bytes | None:
        """The blob of this tenant's document, None if it has none."""

    def delete(self, session: Session, tenant_id: str, document_id: str) -> None:
        """Delete the blob of this tenant's document, if any."""

    def document_ids(self, session: Session, tenant_id: str) -> set[str]:
        """The ids of this tenant's stored originals."""


def backend_for(settings: Settings) -> Backend:
    """The backend the settings choose (`auto`: the database when it is PostgreSQL)."""
    if settings.originals_store != "auto":
        return settings.originals_store
    url = settings.resolved_database_url
    return "database" if url.startswith("postgresql") else "files"


def open_original_store(settings: Settings) -> OriginalStore:
    """The original store of this deployment."""
    if backend_for(settings) == "database":
        from core.knowledge.originals_sql import SqlOriginals

        return SqlOriginals()
    from core.knowledge.originals_files import FileOriginals

    return FileOriginals(settings.data_dir / "tenants")
