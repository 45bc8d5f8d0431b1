"""Syslog: RFC 5424 messages, RFC 6587 octet-counting framing, over TCP or TCP+TLS.

The stdlib's `logging.handlers.SysLogHandler` writes RFC 3164 and frames TCP by newline, and
the RFC 5424 packages on PyPI (rfc5424-logging-handler, last release 2019;
syslog-rfc5424-formatter, 2022) are logging handlers/formatters for log records, with no
per-message structured data or message id: the format is small, so it is written here.

Message: `<PRI>1 TIMESTAMP HOSTNAME tenantllm PROCID ACTION [tenantllm@32473 ...] BOM JSON`.
Facility 13 ("log audit"); severity from the outcome (alerts 1, errors 3, refusals 4, else
6). The structured data carries seq, event id, tenant and outcome; 32473 is the private
enterprise number reserved for examples (RFC 5612). The message is the ECS JSON document.

Acknowledgement: TCP syslog has none, so a batch is one connection: send it, half-close
(TLS: close_notify), and count it delivered only when the receiver closes its side in
order. A receiver can only see our end of stream after reading every byte before it; one
that died or reset the connection makes the batch fail, and it is sent again.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Sequence

from core.audit.chain import format_time
from core.audit.query import AuditRecord
from core.siem.document import ALERT_ACTION, json_line

FACILITY_LOG_AUDIT = 13
ENTERPRISE_ID = 32473
BOM = "\ufeff"
_SEVERITY = {"error": 3, "denied": 4, "rate_limited": 4, "cancelled": 5}


def severity(record: AuditRecord) -> int:
    """The RFC 5424 severity of `record` (0 emergency ... 7 debug)."""
    if record.action == ALERT_ACTION:
        return 1
    return _SEVERITY.get(record.outcome, 6)


def header_field(value: str | None, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, at most `limit` long, or `-`."""
    cleaned = "".join(c for c in (value or "") if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


def param_value(value: object) -> str:
    """An SD-PARAM value with `"`, `\\` and `]` escaped (RFC 5424, 6.3.3)."""
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def format_message(record: AuditRecord, hostname: str, procid: int | None = None) -> bytes:
    """The RFC 5424 message of `record` (UTF-8, no framing)."""
    pri = FACILITY_LOG_AUDIT * 8 + severity(record)
    params = {
        "seq": record.seq,
        "event_id": record.event_id,
        "tenant": record.tenant_id or "-",
        "outcome": record.outcome,
    }
    sd = " ".join(f'{k}="{param_value(v)}"' for k, v in params.items())
    header = " ".join(
        [
            f"<{pri}>1",
            format_time(record.created_at),
            header_field(hostname, 255),
            "tenantllm",
            header_field(str(procid if procid is not None else os.getpid()), 128),
            header_field(record.action, 32),
        ]
    )
    return f"{header} [tenantllm@{ENTERPRISE_ID} {sd}] {BOM}{json_line(record)}".encode()


def frame(message: bytes) -> bytes:
    """RFC 6587 octet counting: `LENGTH SP MESSAGE`."""
    return str(len(message)).encode("ascii") + b" " + message


class SyslogSink:
    """Sends batches to a syslog receiver over TCP, or TLS when `tls` is given."""

    kind = "syslog"
    starts_at_head = False

    def __init__(
        self, name: str, host: str, port: int, tls: ssl.SSLContext | None, timeout: float
    ) -> None:
        """A sink for `host:port`; `tls` verifies the receiver (None: plain TCP)."""
        self.name = name
        self.host, self.port = host, port
        self.tls = tls
        self.timeout = timeout
        self.hostname = socket.gethostname()

    def deliver(self, records: Sequence[AuditRecord]) -> int:
        """Send `records` on one connection; all or nothing (raises OSError on failure)."""
        payload = b"".join(frame(format_message(r, self.hostname)) for r in records)
        with socket.create_connection((self.host, self.port), timeout=self.timeout) as raw:
            if self.tls is None:
                raw.sendall(payload)
                raw.shutdown(socket.SHUT_WR)
                _wait_for_close(raw)
                return len(records)
            with self.tls.wrap_socket(raw, server_hostname=self.host) as wrapped:
                wrapped.sendall(payload)
                # unwrap sends close_notify and returns once the receiver answered with its
                # own: its TLS layer has read everything we sent.
                plain = wrapped.unwrap()
                plain.shutdown(socket.SHUT_WR)
                _wait_for_close(plain)
        return len(records)

    def close(self) -> None:
        """Nothing is kept open between batches."""


def _wait_for_close(sock: socket.socket) -> None:
    # Anything the receiver sends is ignored; an orderly end of stream is the acknowledgement.
    while sock.recv(4096):
        pass
