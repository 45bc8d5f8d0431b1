"""Benchmark 10: audit events to the SIEM, against the audit writer's own rate (issue 17).

On SQLite, in one run: N events recorded through `Auditor.record()` until `flush()` says all
are stored (the writer's events/s, the baseline), then the same rows delivered from the log by
the product's `Deliverer` (cursor reads, one batch per round trip, cursor advanced on each
acknowledgement) to each sink against a real local receiver started here: the JSON-lines file
(fsynced), syslog RFC 5424 over TCP (octet counting; a batch counts when the receiver closes
in order) and Splunk HEC over HTTP. Each sink's events/s is reported as a ratio to the
writer's. The writer's figure is a burst (thousands/s) far above what chat turns produce; the
target is that each sink delivers at least half of it, so a SIEM that was down catches up at
once when it returns.
"""

from __future__ import annotations

import http.server
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bench.audit_overhead import _event
from bench.common import BenchContext, BenchResult, Table, free_port, ratio, target


class _Drain(socketserver.StreamRequestHandler):
    """Read a syslog connection to its end, then close in order (the sink's acknowledgement)."""

    def handle(self) -> None:
        while self.rfile.read(65536):
            pass


class _Hec(http.server.BaseHTTPRequestHandler):
    """Accept every HEC batch as Splunk does."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = b'{"text":"Success","code":0}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        """Quiet."""


@contextmanager
def _serving(server: socketserver.BaseServer) -> Iterator[None]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def _timed(work: Callable[[], Any]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _deliver(settings: Any, url: str) -> tuple[float, int]:
    """Seconds to deliver the whole log to the sink at `url`, and the rows it acknowledged."""
    from core.siem.deliverer import Deliverer
    from core.siem.sinks import parse_sink

    sink = parse_sink(url, settings)
    deliverer = Deliverer(settings.resolved_database_url, sink, settings)
    results = []
    seconds = _timed(lambda: results.append(deliverer.run_once(force=True)))
    sink.close()
    if results[0].error:
        raise RuntimeError(f"{url}: {results[0].error}")
    return seconds, results[0].delivered


def run(ctx: BenchContext) -> BenchResult:
    """The writer's events/s, then each sink's, on the same rows."""
    from core.audit.auditor import Auditor
    from core.db import upgrade_database

    result = BenchResult("siem", "10. Audit events to the SIEM")
    events = ctx.scale(20000, 2000)
    syslog_port, hec_port = free_port(), free_port()
    settings = ctx.settings("siem", siem_batch_size=500, siem_splunk_token="bench-token")
    upgrade_database(settings.resolved_database_url)
    auditor = Auditor(settings)
    prepared = [_event(i) for i in range(events)]

    def write() -> None:
        for event in prepared:
            auditor.record(event)
        auditor.flush()

    writer_rate = events / _timed(write)
    auditor.close()
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    syslog = socketserver.ThreadingTCPServer(("127.0.0.1", syslog_port), _Drain)
    hec = http.server.ThreadingHTTPServer(("127.0.0.1", hec_port), _Hec)
    sinks = {
        "file (JSON lines, fsync)": f"file://{ctx.subdir('siem-file')}/audit.jsonl",
        "syslog RFC 5424 over TCP": f"syslog+tcp://127.0.0.1:{syslog_port}",
        "Splunk HEC over HTTP": f"splunk-hec+http://127.0.0.1:{hec_port}",
    }
    rows, measured = [], {}
    with _serving(syslog), _serving(hec):
        for name, url in sinks.items():
            seconds, delivered = _deliver(settings, url)
            rate = delivered / seconds
            measured[name] = {"events_per_s": rate, "delivered": delivered}
            rows.append([name, delivered, rate, ratio(rate, writer_rate)])
            result.targets.append(
                target(f"SIEM {name}: events/s / audit writer's", ratio(rate, writer_rate), "x",
                       ">=", 0.5)
            )  # fmt: skip
    rows.insert(0, ["audit writer (record + flush, the baseline)", events, writer_rate, 1.0])
    result.tables.append(
        Table(
            f"{events:,} events on SQLite: written by the audit writer, then delivered from the "
            "log by each sink's deliverer to a local receiver (batches of 500)",
            ["consumer", "events", "events/s", "vs writer"],
            rows,
        )
    )
    result.data = {"events": events, "writer_events_per_s": writer_rate, "sinks": measured}
    return result
