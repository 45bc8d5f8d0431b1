"""The demo documents: `assets/demo_docs/<tenant id>/`, ingested once for each such tenant.

They ship with the code (core/resources.py), so a wheel seeds the same documents as a checkout.
"""

from __future__ import annotations

from pathlib import Path

from core.resources import assets_dir
from core.tenancy import Tenant

#: Who "uploaded" the demo documents, in the registry and the document list.
DEMO_UPLOADER = "system:demo"


def demo_docs_dir() -> Path:
    """The folder of every tenant's demo documents."""
    return assets_dir() / "demo_docs"


def demo_files(tenant: Tenant) -> list[Path]:
    """The tenant's demo documents in name order; none if it has no folder."""
    folder = demo_docs_dir() / tenant.id
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file())
