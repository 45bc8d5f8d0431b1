"""Real receivers for the SIEM tests, started in the test on loopback ports.

- `SyslogReceiver`: a threaded TCP (optionally TLS) server that parses RFC 6587
  octet-counted frames strictly and keeps every RFC 5424 message it received, in order.
- `HttpReceiver`: a threaded HTTP server that records every request (path, headers, body)
  and answers what the test tells it (Splunk HEC or Elasticsearch bulk style).
Both can be stopped and started again on the same port: "the SIEM is down".
"""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import json
import re
import socketserver
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# <PRI>1 TIMESTAMP HOST APP PROCID MSGID [SD] BOM MSG  (RFC 5424, with our one SD element)
RFC5424 = re.compile(
    r"^<(?P<pri>\d{1,3})>1 (?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (?P<host>[!-~]{1,255}) "
    r"(?P<app>[!-~]{1,48}) (?P<procid>[!-~]{1,128}) (?P<msgid>[!-~]{1,32}) "
    r"\[tenantllm@32473 (?P<sd>(?:[a-z_]+=\"(?:[^\"\\\]]|\\[\"\\\]])*\" ?)+)\] \ufeff(?P<msg>.*)$",
    re.DOTALL,
)


def parse_syslog(message: bytes) -> dict[str, Any]:
    """The fields of one RFC 5424 message as we send it; AssertionError if it is not one."""
    match = RFC5424.match(message.decode("utf-8"))
    assert match, f"not an RFC 5424 message: {message[:200]!r}"
    params = dict(re.findall(r'([a-z_]+)="((?:[^"\\\]]|\\["\\\]])*)"', match["sd"]))
    return {**match.groupdict(), "params": params, "document": json.loads(match["msg"])}


def self_signed(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A fresh self-signed certificate for `host` (IP SAN) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "siem-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def _read_frames(stream: Any) -> list[bytes]:
    """Octet-counted frames until end of stream; a malformed frame fails the test."""
    frames = []
    while True:
        digits = b""
        while (char := stream.read(1)) not in (b" ", b""):
            assert char.isdigit(), f"frame length expected, got {digits + char!r}"
            digits += char
        if not digits:
            return frames
        message = stream.read(int(digits))
        assert len(message) == int(digits), "frame shorter than its length"
        frames.append(message)


class SyslogReceiver:
    """A syslog TCP/TLS listener that keeps what it received; stop() and start() again."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None) -> None:
        self.port = port
        self.tls = tls
        self.messages: list[bytes] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._server: _Server | None = None

    def start(self) -> None:
        receiver = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                connection = self.request
                if receiver.tls is not None:
                    connection = receiver.tls.wrap_socket(connection, server_side=True)
                frames = _read_frames(connection.makefile("rb"))
                with receiver._lock:
                    receiver.connections += 1
                    receiver.messages.extend(frames)
                if receiver.tls is not None:
                    connection.unwrap()  # answer the sender's close_notify

        self._server = _Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def parsed(self) -> list[dict[str, Any]]:
        with self._lock:
            return [parse_syslog(m) for m in self.messages]


@dataclass
class Seen:
    """One request the HTTP receiver got."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HttpReceiver:
    """An HTTP server on `port`; `answer(seen) -> (status, json body)` decides each reply."""

    port: int
    answer: Callable[[Seen], tuple[int, Any]]
    requests: list[Seen] = field(default_factory=list)
    _server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                seen = Seen(
                    "POST",
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length),
                )
                status, body = receiver.answer(seen)
                if 200 <= status < 300:
                    receiver.requests.append(seen)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
