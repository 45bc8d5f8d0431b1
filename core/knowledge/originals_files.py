"""Originals as files under the data dir: `<root>/<tenant_id>/files/<document_id>.bin`.

One machine's store (the default with SQLite). The names are ids chosen by the server (a
validated tenant slug, a uuid hex document id), never an uploader's file name. The session
is not used: a file is written at once, and the caller removes it if the transaction fails.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from sqlalchemy.orm import Session


class FileOriginals:
    """Encrypted originals, one file each, in each tenant's own directory."""

    backend: Literal["files"] = "files"

    def __init__(self, root: Path) -> None:
        self._root = root

    def path(self, tenant_id: str, document_id: str) -> Path:
        """Where the blob of this tenant's document is kept."""
        return self._root / tenant_id / "files" / f"{document_id}.bin"

    def put(self, session: Session, tenant_id: str, document_id: str, blob: bytes) -> None:
        """Write the blob atomically (a reader never sees half a file)."""
        path = self.path(tenant_id, document_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, path)

    def get(self, session: Session, tenant_id: str, document_id: str) -> bytes | None:
        """The blob, None if there is no such file."""
        try:
            return self.path(tenant_id, document_id).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, session: Session, tenant_id: str, document_id: str) -> None:
        """Remove the file, if any."""
        self.path(tenant_id, document_id).unlink(missing_ok=True)

    def document_ids(self, session: Session, tenant_id: str) -> set[str]:
        """The ids of the tenant's original files."""
        folder = self._root / tenant_id / "files"
        return {p.stem for p in folder.glob("*.bin")} if folder.is_dir() else set()
