"""`tenantllm siem status|deliver` on a real SQLite audit log and a real syslog listener."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from core.cli import main
from core.config import reset_settings_cache
from tests.fixtures.common import free_port
from tests.siem.helpers import chat_event, record, siem_settings
from tests.siem.receivers import SyslogReceiver


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {"TENANTLLM_DATA_DIR": str(tmp_path), "TENANTLLM_ALERTS_ENABLED": "false"}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    reset_settings_cache()
    return values


def _status(runner: CliRunner) -> dict[str, dict]:
    done = runner.invoke(main, ["siem", "status", "--json"])
    assert done.exit_code == 0, done.output
    return {(row := json.loads(line))["name"]: row for line in done.stdout.splitlines()}


def test_deliver_once_and_status(tmp_path: Path, env: dict[str, str], monkeypatch) -> None:
    receiver = SyslogReceiver(free_port())
    out = tmp_path / "audit.jsonl"
    sinks = [f"file://{out}#file", f"syslog+tcp://127.0.0.1:{receiver.port}#syslog"]
    monkeypatch.setenv("TENANTLLM_SIEM_SINKS", json.dumps(sinks))
    settings = siem_settings(tmp_path, f"sqlite:///{tmp_path / 'tenantllm.db'}")
    runner = CliRunner()
    assert runner.invoke(main, ["db", "upgrade"]).exit_code == 0
    record(settings, [chat_event(i) for i in range(3)])
    # The syslog receiver is down: the file sink delivers, the syslog one fails (exit 1).
    done = runner.invoke(main, ["siem", "deliver", "--once"])
    assert done.exit_code == 1
    assert "file: delivered 3, at seq 3" in done.stdout and "syslog: failed at seq 0" in done.stderr
    status = _status(runner)
    assert (status["file"]["rows_behind"], status["syslog"]["rows_behind"]) == (0, 3)
    assert status["syslog"]["failures"] == 1
    assert "ConnectionRefused" in status["syslog"]["last_error"]
    assert status["syslog"]["seconds_behind"] >= 0 and status["syslog"]["kind"] == "syslog"
    receiver.start()
    try:
        done = runner.invoke(main, ["siem", "deliver", "--once"])
    finally:
        receiver.stop()
    assert done.exit_code == 0 and "syslog: delivered 3" in done.stdout
    assert "file:" not in done.stdout  # nothing new for the file sink
    status = _status(runner)
    assert {s["rows_behind"] for s in status.values()} == {0}
    assert status["syslog"]["last_error"] is None and status["syslog"]["delivered"] == 3
    text = runner.invoke(main, ["siem", "status"]).stdout
    assert "syslog (syslog): at seq 3 of 3, 0 rows / 0 s behind" in text


def test_a_bad_sink_is_one_clear_line(env: dict[str, str], monkeypatch) -> None:
    monkeypatch.setenv("TENANTLLM_SIEM_SINKS", '["gopher://siem:70"]')
    done = CliRunner().invoke(main, ["siem", "status"])
    assert done.exit_code == 1
    assert done.stderr.startswith("error: TENANTLLM_SIEM_SINKS: unknown sink 'gopher://siem:70'")
