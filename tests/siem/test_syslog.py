"""Syslog RFC 5424 over TCP and TLS to a real listener: down, events written, back up."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from core.siem.deliverer import SiemRunner
from tests.fixtures.common import free_port
from tests.siem.helpers import chat_event, cursor_at, deliver, record, siem_settings
from tests.siem.receivers import SyslogReceiver, self_signed


def _seqs(receiver: SyslogReceiver) -> list[int]:
    return [int(m["params"]["seq"]) for m in receiver.parsed()]


def _outage_cycle(settings, receiver: SyslogReceiver, url: str, name: str) -> None:
    """Up: 5 rows; down: 5 more, nothing moves; up again: the 5 arrive, once, in order."""
    record(settings, [chat_event(i) for i in range(5)])
    deliver(settings)
    assert _seqs(receiver) == [1, 2, 3, 4, 5]
    receiver.stop()
    record(settings, [chat_event(i) for i in range(5, 10)])
    runner = SiemRunner(settings)
    [failed] = runner.deliver_all(force=True)
    runner.close()
    assert failed.error and cursor_at(url, name) == 5
    receiver.start()
    deliver(settings)
    deliver(settings)  # restarted again: nothing is resent
    assert _seqs(receiver) == list(range(1, 11))


def test_tcp_outage_loses_nothing_and_repeats_nothing(tmp_path: Path, db_url: str) -> None:
    receiver = SyslogReceiver(free_port())
    receiver.start()
    try:
        settings = siem_settings(
            tmp_path, db_url, siem_sinks=[f"syslog+tcp://127.0.0.1:{receiver.port}#syslog"]
        )
        _outage_cycle(settings, receiver, db_url, "syslog")
    finally:
        receiver.stop()
    first = receiver.parsed()[0]
    assert int(first["pri"]) == 13 * 8 + 6  # log audit, informational
    assert first["app"] == "tenantllm" and first["msgid"] == "chat"
    assert first["params"]["tenant"] == "sales" and first["params"]["outcome"] == "ok"
    assert first["document"]["event"]["sequence"] == 1


def test_denials_are_warnings_and_params_are_escaped(tmp_path: Path, db_url: str) -> None:
    receiver = SyslogReceiver(free_port())
    receiver.start()
    try:
        settings = siem_settings(
            tmp_path, db_url, siem_sinks=[f"syslog+tcp://127.0.0.1:{receiver.port}"]
        )
        tricky = 'te"am]\\x'
        record(
            settings,
            [chat_event(1, outcome="denied", status=403, tenant_id=tricky, action="ui chat\u00e9")],
        )
        deliver(settings)
    finally:
        receiver.stop()
    [message] = receiver.parsed()
    assert int(message["pri"]) == 13 * 8 + 4
    assert message["msgid"] == "uichat"  # printable US-ASCII, no spaces
    assert message["params"]["tenant"] == 'te\\"am\\]\\\\x'
    assert message["document"]["labels"]["tenant"] == tricky


def test_tls_verified_by_the_configured_ca(tmp_path: Path, db_url: str) -> None:
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    receiver = SyslogReceiver(free_port(), tls=context)
    receiver.start()
    sink = f"syslog+tls://127.0.0.1:{receiver.port}#tls"
    try:
        settings = siem_settings(tmp_path, db_url, siem_sinks=[sink], siem_tls_ca_file=str(cert))
        _outage_cycle(settings, receiver, db_url, "tls")
    finally:
        receiver.stop()


def test_tls_refuses_a_receiver_it_cannot_verify(tmp_path: Path, db_url: str) -> None:
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    receiver = SyslogReceiver(free_port(), tls=context)
    receiver.start()
    try:
        settings = siem_settings(  # no CA file: the system CAs do not know this certificate
            tmp_path, db_url, siem_sinks=[f"syslog+tls://127.0.0.1:{receiver.port}#tls"]
        )
        record(settings, [chat_event(1)])
        runner = SiemRunner(settings)
        [result] = runner.deliver_all(force=True)
        runner.close()
    finally:
        receiver.stop()
    assert result.error and "CERTIFICATE_VERIFY_FAILED" in result.error
    assert receiver.messages == [] and cursor_at(db_url, "tls") == 0


@pytest.mark.parametrize(
    "url",
    [
        "syslog+udp://127.0.0.1:514",
        "syslog+tcp://127.0.0.1:notaport",
        "file://relative/path",
        "splunk-hec+https://user:secret@splunk:8088",
        "elasticsearch+https://es:9200/i?token=x",
    ],
)
def test_bad_sink_urls_are_config_errors(tmp_path: Path, db_url: str, url: str) -> None:
    from core.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        SiemRunner(siem_settings(tmp_path, db_url, siem_sinks=[url]))
    assert "TENANTLLM_SIEM" in caught.value.message and "secret" not in caught.value.message
