"""HTTPS served by `tenantllm serve` itself, for deployments without a proxy in front.

The context is built here rather than from uvicorn's `ssl_*` options: uvicorn 0.54's
`create_ssl_context` takes a protocol constant but sets no minimum version, so the floor would
be whatever the linked OpenSSL and Python default to. We set it explicitly (TLS 1.2, or 1.3 by
`TENANTLLM_TLS_MIN_VERSION`); OpenSSL negotiates 1.3 whenever the client offers it. The
context is handed to uvicorn through `ssl_context_factory`. Files are checked before anything
else starts (engine, IdP), so a wrong path is one clear line, not a traceback at bind time.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from core.config import Settings
from core.errors import ConfigError

MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server's TLS context, or None when no certificate is configured (plain HTTP).

    Raises ConfigError when only one of certificate and key is set, a file cannot be read,
    or the pair cannot be loaded (not PEM, key not matching, wrong key password).
    """
    if not settings.tls_enabled:
        return None
    cert = _readable("TENANTLLM_TLS_CERTFILE", settings.tls_certfile)
    key = _readable("TENANTLLM_TLS_KEYFILE", settings.tls_keyfile)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_VERSIONS[settings.tls_min_version]
    # Client-initiated renegotiation is a CPU-exhaustion lever and useless to HTTP/1.1 clients.
    context.options |= ssl.OP_NO_RENEGOTIATION
    password = settings.tls_keyfile_password
    try:
        # Always a callback: without one, OpenSSL would prompt on the terminal for an
        # encrypted key and block the start.
        context.load_cert_chain(cert, key, password=lambda: password)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(
            f"Cannot use the TLS certificate {cert} with key {key}: {exc.__class__.__name__} "
            f"({getattr(exc, 'reason', None) or exc}). Both must be PEM, the key must belong to "
            "the certificate, and an encrypted key needs TENANTLLM_TLS_KEYFILE_PASSWORD."
        ) from None
    return context


def _readable(variable: str, value: str) -> Path:
    """The file a TLS setting names; ConfigError naming the setting if it is unusable."""
    if not value:
        raise ConfigError(
            f"{variable} is not set: TENANTLLM_TLS_CERTFILE and TENANTLLM_TLS_KEYFILE must be "
            "set together (or both left empty for plain HTTP)."
        )
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"{variable}={value} is not a file.")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{variable}={value} cannot be read by this account.")
    return path
