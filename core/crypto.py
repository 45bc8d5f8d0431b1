"""Encryption at rest for stored originals: AES-256-GCM with a per-tenant key.

Each tenant's key is derived with HKDF-SHA256 from the master key (`master_key` setting), so
one tenant's key opens nothing of another's. The tenant id and document id are bound in as
associated data: a file copied into another tenant's folder, or renamed, fails to decrypt.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from core.config import Settings
from core.errors import ConfigError, IngestionError

NONCE_BYTES = 12
MASTER_KEY_FILE = "master.key"


def master_key(settings: Settings) -> bytes:
    """The master key: the setting, or (development only) a random key kept under data_dir."""
    if settings.master_key:
        return settings.master_key.encode("utf-8")
    if settings.mode == "production":
        raise ConfigError("TENANTLLM_MASTER_KEY must be set in production mode.")
    return _development_key(settings.data_dir / MASTER_KEY_FILE)


def _development_key(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: two processes starting at once must not both write a different key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_bytes().strip()
        if not key:
            raise ConfigError(f"The development master key file {path} is empty.") from None
        return key
    with os.fdopen(fd, "wb") as handle:
        key = secrets.token_hex(32).encode("ascii")
        handle.write(key)
    return key


def tenant_key(master: bytes, tenant_id: str) -> bytes:
    """The 256-bit key of one tenant, derived from the master key."""
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=b"tenantllm-files-v1",
        info=f"tenant:{tenant_id}".encode(),
    )
    return hkdf.derive(master)


def _aad(tenant_id: str, document_id: str) -> bytes:
    return f"{tenant_id}/{document_id}".encode()


def encrypt(key: bytes, tenant_id: str, document_id: str, data: bytes) -> bytes:
    """nonce || ciphertext+tag of `data`, bound to this tenant and document."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, data, _aad(tenant_id, document_id))


def decrypt(key: bytes, tenant_id: str, document_id: str, blob: bytes) -> bytes:
    """The plaintext of `encrypt`'s output; IngestionError if it was altered or misplaced."""
    nonce, body = blob[:NONCE_BYTES], blob[NONCE_BYTES:]
    try:
        return AESGCM(key).decrypt(nonce, body, _aad(tenant_id, document_id))
    except InvalidTag:
        raise IngestionError(
            f"Stored original of document {document_id} cannot be decrypted "
            "(wrong master key or altered file)."
        ) from None
