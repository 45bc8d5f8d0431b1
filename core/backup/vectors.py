"""Every team's vectors from its embedded store onto the Chroma server: `copy_vectors`.

The raw records move (ids, embeddings, chunk text, metadata), not the documents again: the
copy is exact and costs no embedding time. Each team's records go into that team's own
database on the server, opened the way the app opens it (core/knowledge/chroma_server.py),
so a migrated team is found where its replicas will look. A team whose plugin brings its
own store is left alone (its plugin knows where its vectors live).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import chromadb

from core.config import Settings
from core.errors import BackupError
from core.knowledge.chroma_server import ChromaServers
from core.knowledge.tenant_files import TenantFiles
from core.knowledge.vectorstore import COLLECTION_NAME, _chroma_settings
from core.tenancy import Tenant, TenantRegistry

BATCH = 1000
INCLUDE: Any = ["embeddings", "documents", "metadatas"]


def copy_vectors(source: Settings, target: Settings, tenants: TenantRegistry) -> dict[str, int]:
    """Copy each team's embedded vectors into its database on the target's Chroma server.

    Only teams that are embedded in `source` and on a server in `target` move.
    Refuses a team whose server collection has records already; on a failure, what this
    call wrote is deleted again. Returns the records copied per team.
    """
    servers, before = ChromaServers(target), ChromaServers(source)
    files = TenantFiles(source, tenants)
    plan = [
        (tenant, servers.url_for(tenant))
        for tenant in tenants.all()
        if tenant.store_factory is None and servers.url_for(tenant) and not before.url_for(tenant)
    ]
    targets = {tenant.id: servers.store(tenant.id, url).client for tenant, url in plan}
    busy = sorted(team for team, collection in targets.items() if collection.count())
    if busy:
        raise BackupError(
            f"The Chroma server already holds vectors of {', '.join(busy)}: migrate only "
            "into empty team databases (nothing was written)."
        )
    copied: dict[str, int] = {}
    try:
        for tenant, _ in plan:
            copied[tenant.id] = _copy_team(files.chroma_dir(tenant), targets[tenant.id], tenant)
    except BaseException:
        for collection in targets.values():
            _empty(collection)
        raise
    return copied


def _copy_team(directory: Path, into: Any, tenant: Tenant) -> int:
    """One team's records, in batches; checks that the server holds exactly them after."""
    if not directory.is_dir():
        return 0
    client = chromadb.PersistentClient(path=str(directory), settings=_chroma_settings())
    try:
        collection = client.get_collection(COLLECTION_NAME)
    except Exception:
        return 0
    total = collection.count()
    for offset in range(0, total, BATCH):
        batch = collection.get(limit=BATCH, offset=offset, include=INCLUDE)
        into.add(
            ids=batch["ids"],
            embeddings=batch["embeddings"],
            documents=batch["documents"],
            metadatas=batch["metadatas"],
        )
    if into.count() != total:
        raise BackupError(f"Team {tenant.id}: {into.count()} vectors landed of {total}: undone.")
    return total


def _empty(collection: Any) -> None:
    """Delete every record of a team's server collection (undoing a failed copy)."""
    while ids := collection.get(limit=BATCH, include=[])["ids"]:
        collection.delete(ids=ids)
