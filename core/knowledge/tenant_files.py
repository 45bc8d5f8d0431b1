"""Where a tenant's knowledge lives on disk, and its encrypted originals.

    <data_dir>/tenants/<tenant_id>/chroma/              the tenant's own vector store
    <data_dir>/tenants/<tenant_id>/bm25/                its keyword (BM25) index
    <data_dir>/tenants/<tenant_id>/files/<doc_id>.bin   an original, encrypted (core/crypto.py)
    <data_dir>/tenants/<tenant_id>/tmp/                 private copies handed to the parser

Originals are named by document id: an uploader's file name is display text, never a path.
"""

from __future__ import annotations

import os
from pathlib import Path

from core import crypto
from core.config import Settings
from core.tenancy import Tenant, TenantRegistry


class TenantFiles:
    """The tenants' directories and their encrypted originals."""

    def __init__(self, settings: Settings, tenants: TenantRegistry) -> None:
        self._root = settings.data_dir / "tenants"
        self._tenants = tenants
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
        """Where the encrypted original of a document is stored."""
        return self.tenant_dir(tenant) / "files" / f"{document_id}.bin"

    def write_original(self, tenant: Tenant, document_id: str, data: bytes) -> None:
        """Encrypt `data` with the tenant's key and store it, atomically."""
        key = crypto.tenant_key(self._master, tenant.id)
        path = self.original_path(tenant, document_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(crypto.encrypt(key, tenant.id, document_id, data))
        os.replace(tmp, path)

    def read_original(self, tenant: Tenant, document_id: str) -> bytes:
        """The decrypted original (fails if the blob is not this tenant's and document's)."""
        key = crypto.tenant_key(self._master, tenant.id)
        blob = self.original_path(tenant, document_id).read_bytes()
        return crypto.decrypt(key, tenant.id, document_id, blob)

    def remove_original(self, tenant: Tenant, document_id: str) -> None:
        """Delete the stored original, if any."""
        self.original_path(tenant, document_id).unlink(missing_ok=True)
