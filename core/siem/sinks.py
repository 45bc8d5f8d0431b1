"""The sinks of `Settings.siem_sinks`: what a URL means, and the JSON-lines file sink.

- `file:///var/log/tenantllm/audit.jsonl`: one ECS JSON document per line, appended, fsynced.
- `syslog+tcp://host:514`, `syslog+tls://host:6514`: RFC 5424 (core/siem/syslog.py).
- `splunk-hec+https://host:8088`: Splunk HTTP Event Collector (`siem_splunk_token`).
- `elasticsearch+https://host:9200/index`: `_bulk` into `index` (default `tenantllm-audit`).

`https` may be `http` for a receiver on the same host. A `#name` fragment names the sink's
cursor (default: the URL itself): the cursor, not the URL, is where delivery resumes, so
renaming a sink starts it again from the first audit row. Secrets never go in the URL (it
is shown in `tenantllm siem status`): tokens have their own settings.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol
from urllib.parse import SplitResult, urlsplit

from core.audit.query import AuditRecord
from core.config import Settings
from core.errors import ConfigError
from core.siem.document import json_line
from core.siem.http_sinks import ElasticsearchSink, SplunkHecSink
from core.siem.syslog import SyslogSink


class Sink(Protocol):
    """Where audit rows go. `deliver` is all or a prefix: never a row out of order."""

    name: str
    kind: str
    starts_at_head: bool  # a new cursor starts at the log's head, not its first row

    def deliver(self, records: Sequence[AuditRecord]) -> int:
        """Hand `records` over in order; return how many (from the first) were acknowledged.

        Raises `DeliveryFailed` or OSError when the receiver acknowledged none.
        """

    def close(self) -> None:
        """Release connections and files."""


class FileSink:
    """Appends one JSON line per row to a file (for Filebeat or a Splunk forwarder)."""

    kind = "file"
    starts_at_head = False

    def __init__(self, name: str, path: Path) -> None:
        """A sink appending to `path` (created 0600: audit rows hold personal data)."""
        self.name = name
        self.path = path

    def deliver(self, records: Sequence[AuditRecord]) -> int:
        """Append `records`; acknowledged once fsync returns. A failed write leaves no half line."""
        data = "".join(json_line(r) + "\n" for r in records).encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            start = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, start)  # a full disk must not leave a torn line behind
                raise
        finally:
            os.close(fd)
        return len(records)

    def close(self) -> None:
        """The file is opened per batch: nothing to close."""


def tls_context(settings: Settings) -> ssl.SSLContext:
    """The context every TLS sink verifies its receiver with (and presents a client cert)."""
    try:
        context = ssl.create_default_context(cafile=settings.siem_tls_ca_file or None)
        if settings.siem_tls_cert_file:
            context.load_cert_chain(settings.siem_tls_cert_file, settings.siem_tls_key_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"TENANTLLM_SIEM_TLS_*: cannot load the certificates: {exc}") from None
    return context


def sink_name(url: str) -> str:
    """The cursor name of the sink at `url`: its `#fragment`, else the URL without it."""
    parts = urlsplit(url)
    return parts.fragment or parts._replace(fragment="").geturl()


def _refuse_secrets(parts: SplitResult) -> None:
    if parts.password is not None or parts.query:
        shown = f"{parts.scheme}://{parts.hostname or ''}{parts.path}"  # never the secret
        raise ConfigError(
            f"TENANTLLM_SIEM_SINKS: {shown!r} carries a password or query string; "
            "put tokens in TENANTLLM_SIEM_SPLUNK_TOKEN or TENANTLLM_SIEM_ELASTICSEARCH_API_KEY"
        )


def _host_port(url: str, parts: SplitResult, default_port: int) -> tuple[str, int]:
    try:
        port = parts.port or default_port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise ConfigError(f"TENANTLLM_SIEM_SINKS: {url!r} needs a host and a valid port")
    return parts.hostname, port


def parse_sink(url: str, settings: Settings) -> Sink:
    """The sink that `url` names (ConfigError for one this product does not know)."""
    parts = urlsplit(url.strip())
    _refuse_secrets(parts)
    name, scheme = sink_name(url.strip()), parts.scheme.lower()
    timeout = settings.siem_timeout_seconds
    if scheme == "file":
        if parts.netloc or not parts.path.startswith("/"):
            raise ConfigError(f"TENANTLLM_SIEM_SINKS: {url!r}: use file:///absolute/path")
        return FileSink(name, Path(parts.path))
    if scheme in ("syslog+tcp", "syslog+tls"):
        host, port = _host_port(url, parts, 6514 if scheme.endswith("tls") else 514)
        tls = tls_context(settings) if scheme.endswith("tls") else None
        return SyslogSink(name, host, port, tls, timeout)
    base, _, transport = scheme.partition("+")
    if transport in ("http", "https") and base in ("splunk-hec", "elasticsearch"):
        host, port = _host_port(url, parts, 8088 if base == "splunk-hec" else 9200)
        origin = f"{transport}://{host}:{port}"
        verify = tls_context(settings) if transport == "https" else False
        if base == "splunk-hec":
            token = settings.siem_splunk_token.get_secret_value()
            if not token:
                raise ConfigError(f"TENANTLLM_SIEM_SPLUNK_TOKEN is needed by sink {name!r}")
            return SplunkHecSink(name, origin + (parts.path or ""), token, verify, timeout)
        key = settings.siem_elasticsearch_api_key.get_secret_value()
        index = parts.path.strip("/") or "tenantllm-audit"
        return ElasticsearchSink(name, origin, index, key, verify, timeout)
    raise ConfigError(
        f"TENANTLLM_SIEM_SINKS: unknown sink {url!r} (file://, syslog+tcp://, syslog+tls://, "
        "splunk-hec+https://, elasticsearch+https://)"
    )


def build_sinks(settings: Settings) -> list[Sink]:
    """Every configured sink; two with one cursor name are refused."""
    sinks = [parse_sink(url, settings) for url in settings.siem_sinks]
    names = [s.name for s in sinks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"TENANTLLM_SIEM_SINKS: two sinks named {duplicates[0]!r}")
    return sinks
