"""Where a tenant's knowledge lives: its directories, and its encrypted originals.

    <data_dir>/tenants/<tenant_id>/chroma/              the tenant's own embedded vector store
    <data_dir>/tenants/<tenant_id>/bm25/                its keyword (BM25) index
    <data_dir>/tenants/<tenant_id>/files/<doc_id>.bin   an original, encrypted (`files` store)
    <data_dir>/tenants/<tenant_id>/tmp/                 private copies handed to the parser

Originals are encrypted here with the tenant's own key, bound to the tenant and document id
(core/crypto.py), and kept by the original store the settings choose (core/knowledge/
originals.py): these files, or a table of the SQL database that every replica reads. They
are named by document id: an uploader's file name is display text, never a path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.orm import Session

from core import crypto
from core.config import Settings
from core.db import session_scope
from core.errors import IngestionError
from core.knowledge.originals import OriginalStore, open_original_store
from core.tenancy import Tenant, TenantRegistry


class TenantFiles:
    """The tenants' directories and their encrypted originals."""

    def __init__(self, settings: Settings, tenants: TenantRegistry) -> None:
        self._root = settings.data_dir / "tenants"
        self._tenants = tenants
        self._db_url = settings.resolved_database_url
        self.originals: OriginalStore = open_original_store(settings)
        # Resolved now so that a production deployment without a master key fails at startup.
        self._master = crypto.master_key(settings)

    def tenant_dir(self, tenant: Tenant) -> Path:
        """The tenant's own data directory (its id is a validated slug of a registered tenant)."""
        return self._root / self._tenants.get(tenant.id).id

    def chroma_dir(self, tenant: Tenant) -> Path:
        """The directory of the tenant's vector store."""
        return self.tenant_dir(tenant) / "chroma"

    def keyword_dir(self, tenant: Tenant) -> Path:
        """The directory of the tenant's keyword (BM25) index."""
        return self.tenant_dir(tenant) / "bm25"

    def scratch_dir(self, tenant: Tenant) -> Path:
        """The tenant's private scratch directory (created if missing)."""
        scratch = self.tenant_dir(tenant) / "tmp"
        scratch.mkdir(parents=True, exist_ok=True)
        return scratch

    def original_path(self, tenant: Tenant, document_id: str) -> Path:
        """Where the `files` store keeps the encrypted original of a document."""
        return self.tenant_dir(tenant) / "files" / f"{document_id}.bin"

    def write_original(
        self, tenant: Tenant, document_id: str, data: bytes, session: Session | None = None
    ) -> None:
        """Encrypt `data` with the tenant's key and store it (in `session`'s transaction)."""
        tenant = self._tenants.get(tenant.id)
        key = crypto.tenant_key(self._master, tenant.id)
        blob = crypto.encrypt(key, tenant.id, document_id, data)
        with self._session(session) as active:
            self.originals.put(active, tenant.id, document_id, blob)

    def read_original(
        self, tenant: Tenant, document_id: str, session: Session | None = None
    ) -> bytes:
        """The decrypted original (IngestionError if missing, or not this tenant's document)."""
        tenant = self._tenants.get(tenant.id)
        with self._session(session) as active:
            blob = self.originals.get(active, tenant.id, document_id)
        if blob is None:
            raise IngestionError(f"The stored original of document {document_id} is missing.")
        key = crypto.tenant_key(self._master, tenant.id)
        return crypto.decrypt(key, tenant.id, document_id, blob)

    def remove_original(
        self, tenant: Tenant, document_id: str, session: Session | None = None
    ) -> None:
        """Delete the stored original, if any (with `session`'s commit)."""
        tenant = self._tenants.get(tenant.id)
        with self._session(session) as active:
            self.originals.delete(active, tenant.id, document_id)

    def original_ids(self, tenant: Tenant, session: Session | None = None) -> set[str]:
        """The ids of the tenant's stored originals (what "nothing half-written" counts)."""
        tenant = self._tenants.get(tenant.id)
        with self._session(session) as active:
            return self.originals.document_ids(active, tenant.id)

    @contextmanager
    def _session(self, session: Session | None) -> Iterator[Session]:
        """The caller's session (the caller commits), else a transaction of our own."""
        if session is not None:
            yield session
            return
        with session_scope(self._db_url) as own:
            yield own
