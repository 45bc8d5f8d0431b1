"""Originals follow an install onto another database: `adopt_originals`.

Where the encrypted originals live depends on the settings (core/knowledge/originals.py:
files under the data dir with SQLite, a table of the database with PostgreSQL). An install
restored or migrated across that line finds its originals in the other store: without this
step every document would be listed but `tenantllm reindex` could not rebuild it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from core.config import Settings
from core.db import session_scope
from core.knowledge.documents import DocumentRow
from core.knowledge.originals import OriginalStore, open_original_store
from core.knowledge.originals_files import FileOriginals
from core.knowledge.originals_sql import SqlOriginals


@dataclass(frozen=True)
class Adopted:
    """How many originals moved into the install's store, and how many are nowhere."""

    moved: int
    missing: int


def adopt_originals(settings: Settings) -> Adopted:
    """Copy into the configured store each registered document's original it lacks.

    The blobs move as they are: they are encrypted with keys derived from the install's
    master key, which a restore or migration keeps. The other store's copies stay (the
    source of a migration is only read); one transaction, so a failure moves nothing.
    """
    store = open_original_store(settings)
    other: OriginalStore = (
        FileOriginals(settings.data_dir / "tenants")
        if store.backend == "database"
        else SqlOriginals()
    )
    moved = missing = 0
    with session_scope(settings.resolved_database_url) as session:
        registered: dict[str, list[str]] = {}
        for tenant_id, document_id in session.execute(
            select(DocumentRow.tenant_id, DocumentRow.id)
        ):
            registered.setdefault(tenant_id, []).append(document_id)
        for tenant_id, documents in registered.items():
            have = store.document_ids(session, tenant_id)
            for document_id in documents:
                if document_id in have:
                    continue
                blob = other.get(session, tenant_id, document_id)
                if blob is None:
                    missing += 1
                    continue
                store.put(session, tenant_id, document_id, blob)
                moved += 1
    return Adopted(moved, missing)
