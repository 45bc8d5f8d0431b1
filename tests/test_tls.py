"""`tenantllm serve` terminating TLS itself: a real server on a self-signed certificate.

The server is the real `tenantllm serve` in a subprocess (demo IdP, the `openai` engine
backend pointed at a closed port, so no vLLM is loaded: /healthz answers without an engine).
Old protocol versions are offered by a client that is first shown to complete a TLS 1.1
handshake with a local server that allows it, so a refusal is the app's, not the client's.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from core.cli import main
from core.cli.tls import tls_context
from core.config import Settings, reset_settings_cache
from core.errors import ConfigError
from tests.fixtures.common import BUNDLED_MODEL_DIR, REPO, free_port


@dataclass
class CertFiles:
    """A self-signed certificate for 127.0.0.1/localhost and its key, as PEM files."""

    cert: Path
    key: Path


def write_self_signed(directory: Path, name: str = "server") -> CertFiles:
    """Generate a fresh EC key and a self-signed certificate valid for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    files = CertFiles(directory / f"{name}.crt", directory / f"{name}.key")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


@dataclass
class TlsServer:
    """A running `tenantllm serve` with TLS."""

    port: int
    certs: CertFiles
    log_path: Path

    @property
    def url(self) -> str:
        """The https base URL."""
        return f"https://127.0.0.1:{self.port}"


def _wait_healthy(server: TlsServer, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited early:\n{server.log_path.read_text()[-4000:]}")
        try:
            httpx.get(f"{server.url}/healthz", verify=str(server.certs.cert), timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise RuntimeError(f"serve not healthy in time:\n{server.log_path.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    """`tenantllm serve` on a fresh data dir with TENANTLLM_TLS_CERTFILE/KEYFILE set."""
    work = tmp_path_factory.mktemp("tls")
    certs = write_self_signed(work)
    env = {
        **os.environ,
        "TENANTLLM_DATA_DIR": str(work / "data"),
        "TENANTLLM_PORT": str(free_port()),
        "TENANTLLM_DEMO_IDP_PORT": str(free_port()),
        # A served-model name as a remote engine knows it: not a folder, not in the HF cache.
        # serve starts anyway (the remote server tokenizes; nothing is loaded here).
        "TENANTLLM_MODEL": "org/served-elsewhere",
        "TENANTLLM_ENGINE_BACKEND": "openai",  # never reached: no vLLM in this process
        "TENANTLLM_ENGINE_URL": f"http://127.0.0.1:{free_port()}",
        "TENANTLLM_TLS_CERTFILE": str(certs.cert),
        "TENANTLLM_TLS_KEYFILE": str(certs.key),
        "HF_HUB_OFFLINE": "1",
    }
    server = TlsServer(int(env["TENANTLLM_PORT"]), certs, work / "serve.log")
    with open(server.log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "core.cli", "serve"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_healthy(server, proc)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _client_context(certs: CertFiles, highest: ssl.TLSVersion) -> ssl.SSLContext:
    """A verifying client that offers TLS 1.0 up to `highest` (SECLEVEL 0 allows the old ones)."""
    context = ssl.create_default_context(cafile=str(certs.cert))
    with warnings.catch_warnings():  # TLSv1/TLSv1_1 are deprecated names: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = highest
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


def _handshake(port: int, context: ssl.SSLContext) -> str:
    """The TLS version negotiated with 127.0.0.1:port (raises ssl.SSLError if refused)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return str(tls.version())


def test_healthz_over_https(tls_server: TlsServer) -> None:
    answer = httpx.get(f"{tls_server.url}/healthz", verify=str(tls_server.certs.cert))
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok"}


def test_tls13_is_negotiated_when_offered(tls_server: TlsServer) -> None:
    context = _client_context(tls_server.certs, ssl.TLSVersion.TLSv1_3)
    assert _handshake(tls_server.port, context) == "TLSv1.3"


def test_tls12_is_still_accepted(tls_server: TlsServer) -> None:
    context = _client_context(tls_server.certs, ssl.TLSVersion.TLSv1_2)
    assert _handshake(tls_server.port, context) == "TLSv1.2"


@contextlib.contextmanager
def permissive_tls_server(certs: CertFiles) -> Iterator[int]:
    """A local TLS server that accepts TLS 1.0 and 1.1: the control for the refusal tests."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.load_cert_chain(certs.cert, certs.key)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn, contextlib.suppress(ssl.SSLError, OSError):
                context.wrap_socket(conn, server_side=True).close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        listener.close()
        thread.join(timeout=5)


@pytest.mark.parametrize(
    ("version", "name"),
    [(ssl.TLSVersion.TLSv1_1, "TLSv1.1"), (ssl.TLSVersion.TLSv1, "TLSv1")],
    ids=["tls1.1", "tls1.0"],
)
def test_old_tls_versions_are_refused(
    tls_server: TlsServer, version: ssl.TLSVersion, name: str
) -> None:
    context = _client_context(tls_server.certs, version)
    with permissive_tls_server(tls_server.certs) as control_port:
        # The client can speak this version: a server that allows it completes the handshake.
        assert _handshake(control_port, context) == name
    with pytest.raises(ssl.SSLError):
        _handshake(tls_server.port, context)


def test_plain_http_gets_no_http_answer(tls_server: TlsServer) -> None:
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=10) as raw:
        raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := raw.recv(4096):
                received += chunk
    assert not received.startswith(b"HTTP/"), received[:200]
    assert b"ok" not in received


def test_session_cookie_is_secure_under_tls(tls_server: TlsServer) -> None:
    # /login stores the sign-in state in the session cookie before redirecting to the IdP.
    answer = httpx.get(f"{tls_server.url}/login", verify=str(tls_server.certs.cert))
    assert answer.status_code in (302, 303, 307), answer.text[:300]
    cookies = answer.headers.get_list("set-cookie")
    session = [c for c in cookies if c.lower().startswith("tenantllm")]
    assert session, cookies
    assert all("; secure" in c.lower() for c in session), session


# --- configuration errors: typed, before anything starts --------------------------------


def _settings(tmp_path: Path, **tls: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", model=str(BUNDLED_MODEL_DIR), **tls)


def test_no_tls_settings_means_plain_http(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert tls_context(settings) is None
    assert settings.base_url.startswith("http://")
    assert not settings.secure_cookies


def test_context_floor_is_tls12_and_can_be_raised(tmp_path: Path) -> None:
    certs = write_self_signed(tmp_path)
    files: dict[str, Any] = {"tls_certfile": str(certs.cert), "tls_keyfile": str(certs.key)}
    default = tls_context(_settings(tmp_path, **files))
    strict = tls_context(_settings(tmp_path, **files, tls_min_version="1.3"))
    assert default is not None and strict is not None
    assert default.minimum_version == ssl.TLSVersion.TLSv1_2
    assert strict.minimum_version == ssl.TLSVersion.TLSv1_3
    assert _settings(tmp_path, **files).base_url.startswith("https://")
    assert _settings(tmp_path, **files).secure_cookies


@pytest.mark.parametrize("missing", ["tls_certfile", "tls_keyfile"])
def test_one_file_alone_is_a_config_error(tmp_path: Path, missing: str) -> None:
    certs = write_self_signed(tmp_path)
    files: dict[str, Any] = {"tls_certfile": str(certs.cert), "tls_keyfile": str(certs.key)}
    files[missing] = ""
    with pytest.raises(ConfigError, match=f"TENANTLLM_{missing.upper()} is not set"):
        tls_context(_settings(tmp_path, **files))


def test_unusable_files_are_config_errors(tmp_path: Path) -> None:
    certs = write_self_signed(tmp_path)
    other = write_self_signed(tmp_path, "other")
    unreadable = tmp_path / "unreadable.key"
    unreadable.write_bytes(certs.key.read_bytes())
    unreadable.chmod(0)
    cases = {
        "is not a file": (str(certs.cert), str(tmp_path / "absent.key")),
        "Cannot use the TLS certificate": (str(certs.cert), str(other.key)),  # not its key
        "Cannot use the TLS": (str(certs.key), str(certs.key)),  # a key is no certificate
    }
    if os.geteuid() != 0:  # root reads a 0000 file anyway
        cases["cannot be read"] = (str(certs.cert), str(unreadable))
    for message, (cert, key) in cases.items():
        with pytest.raises(ConfigError, match=message):
            tls_context(_settings(tmp_path, tls_certfile=cert, tls_keyfile=key))


def test_serve_with_half_a_tls_config_exits_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    certs = write_self_signed(tmp_path)
    monkeypatch.setenv("TENANTLLM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TENANTLLM_TLS_CERTFILE", str(certs.cert))
    monkeypatch.delenv("TENANTLLM_TLS_KEYFILE", raising=False)
    reset_settings_cache()
    try:
        result = CliRunner().invoke(main, ["serve"])
    finally:
        reset_settings_cache()
    assert result.exit_code == 1
    assert "error: TENANTLLM_TLS_KEYFILE is not set" in result.output
    assert not (tmp_path / "data").exists()  # nothing was started or written
