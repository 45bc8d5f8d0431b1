"""The archive's manifest: what it holds, each member's sha256, and a MAC over all of it.

The MAC is HMAC-SHA256 under a key derived (HKDF, its own `info`) from the install's master
key, the key the stored originals are encrypted with:
- `master_key_source = "setting"` (TENANTLLM_MASTER_KEY, production): the key is NOT in the
  archive. Restore needs the same setting; the MAC then proves both "same key" and "not
  altered since written", before anything is written.
- `master_key_source = "data_dir_file"` (development: `master.key` under the data dir): the
  key file is in the archive, so the MAC catches corruption and accidental edits, not a
  deliberate forger who rewrites the key file too. Such an archive is as secret as the data
  dir itself.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from core.errors import BackupError

FORMAT = "tenantllm-backup"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
KeySource = Literal["setting", "data_dir_file"]


@dataclass
class Member:
    """One file of the archive: its sha256 and size in bytes."""

    sha256: str
    size: int


@dataclass
class Manifest:
    """Everything restore checks before it writes anything."""

    tenantllm_version: str
    created_at: str
    alembic_revision: str | None
    database_backend: str
    master_key_source: KeySource
    table_rows: dict[str, int] = field(default_factory=dict)  # in load (dependency) order
    members: dict[str, Member] = field(default_factory=dict)  # archive name -> checksum
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    mac: str = ""

    def body(self) -> bytes:
        """The canonical bytes the MAC covers (everything but the MAC)."""
        data = asdict(self)
        data.pop("mac")
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    def sign(self, master: bytes) -> None:
        """Set the MAC under `master` (call last, when every member is listed)."""
        self.mac = hmac.new(_mac_key(master), self.body(), hashlib.sha256).hexdigest()

    def signed_by(self, master: bytes) -> bool:
        """True when the MAC was made with `master` over exactly this content."""
        expected = hmac.new(_mac_key(master), self.body(), hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, self.mac)

    def to_json(self) -> bytes:
        """The manifest as stored in the archive."""
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()


def parse_manifest(raw: bytes) -> Manifest:
    """The manifest of an archive; BackupError if it is not one this version can read."""
    try:
        data: dict[str, Any] = json.loads(raw)
        if data.get("format") != FORMAT:
            raise BackupError("This file is not a tenantllm backup (no tenantllm manifest).")
        if data.get("format_version") != FORMAT_VERSION:
            raise BackupError(
                f"Backup format {data.get('format_version')} is not supported by this version "
                f"of tenantllm (it reads format {FORMAT_VERSION})."
            )
        data["members"] = {name: Member(**m) for name, m in data["members"].items()}
        return Manifest(**data)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise BackupError(f"The backup's manifest is unreadable ({type(exc).__name__}).") from None


def _mac_key(master: bytes) -> bytes:
    # Its own HKDF label: the MAC key opens no file, and no tenant key verifies a manifest.
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"tenantllm-backup-v1", info=b"mac")
    return hkdf.derive(master)
