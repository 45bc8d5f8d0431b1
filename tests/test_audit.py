"""The audit log on SQLite: exact counts under concurrency, the hash chain, queries, the CLI."""

from __future__ import annotations

import csv
import getpass
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from core.audit.auditor import AuditEvent, AuditFilters, Auditor
from core.cli import main
from core.db import upgrade_database
from tests.audit_helpers import (
    event,
    hostile_events,
    racing_appends,
    record_concurrently,
    refused_http_burst,
    run_writer_process,
    scalar,
    settings_for,
    sqlite_url,
)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return sqlite_url(tmp_path)


@pytest.fixture
def auditor(tmp_path: Path, url: str) -> Auditor:
    auditor = Auditor(settings_for(tmp_path, url))
    yield auditor
    auditor.close()


def test_500_concurrent_records_exactly_500_events_and_chain_verifies(
    auditor: Auditor, url: str
) -> None:
    record_concurrently(auditor, 500)
    auditor.flush()
    assert scalar(url, "SELECT count(*) FROM audit_events") == 500
    assert scalar(url, "SELECT count(DISTINCT event_id) FROM audit_events") == 500
    assert scalar(url, "SELECT count(DISTINCT request_id) FROM audit_events") == 500
    assert scalar(url, "SELECT min(seq) FROM audit_events") == 1
    assert scalar(url, "SELECT max(seq) FROM audit_events") == 500
    report = auditor.verify()
    assert report.ok, report.message
    assert (report.checked, report.head_seq) == (500, 500)
    assert report.head_hash == scalar(url, "SELECT hash FROM audit_events WHERE seq = 500")


async def test_500_concurrent_http_requests_exactly_500_events(tmp_path: Path) -> None:
    auditor = await refused_http_burst(settings_for(tmp_path, ""), 500)
    url = auditor.database_url
    assert scalar(url, "SELECT count(*) FROM audit_events WHERE outcome = 'denied'") == 500
    assert scalar(url, "SELECT count(DISTINCT user_agent) FROM audit_events") == 500
    assert auditor.verify().ok
    auditor.close()


async def test_async_stop_drains_everything(tmp_path: Path, url: str) -> None:
    auditor = Auditor(settings_for(tmp_path, url, audit_flush_interval_ms=10_000))
    await auditor.start()
    for n in range(120):
        auditor.record(event(n))
    await auditor.stop()  # long flush interval: only stop() can have written these
    assert scalar(url, "SELECT count(*) FROM audit_events") == 120


def test_stored_fields_match_the_event(auditor: Auditor, url: str) -> None:
    source = event(4, tenant="finance", client_ip="10.0.0.9", user_agent="curl/8", flags=["x"])
    source.prompt_text = "What is the budget?"
    auditor.record(source)
    source.tenant_id = "sales"  # mutating after record() must not change what is stored
    auditor.flush()
    [row] = auditor.query(AuditFilters(), 1, 10).rows
    assert (row.tenant_id, row.user_sub, row.user_email) == (
        "finance",
        "user-4",
        "user4@example.org",
    )
    assert (row.tokens_in, row.tokens_out, row.latency_ms) == (4, 8, pytest.approx(4 / 3, abs=1e-3))
    assert (row.document_ids, row.flags) == (["doc-4"], ["x"])
    assert (row.client_ip, row.user_agent, row.request_id) == ("10.0.0.9", "curl/8", "req-4")
    # The prompt text is stored only when the setting asks for it; its digest always is.
    assert row.prompt_text is None
    assert row.prompt_digest is not None and len(row.prompt_digest) == 64
    assert datetime.now(UTC) - row.created_at < timedelta(minutes=5)


def test_prompt_text_kept_when_enabled(tmp_path: Path, url: str) -> None:
    auditor = Auditor(settings_for(tmp_path, url, audit_prompt_text=True))
    auditor.record(AuditEvent(action="chat", outcome="ok", prompt_text="hello there"))
    auditor.close()
    assert scalar(url, "SELECT prompt_text FROM audit_events") == "hello there"


def test_record_never_raises_on_odd_values(auditor: Auditor, url: str) -> None:
    odd = AuditEvent(action="chat", outcome="ok", status="abc", latency_ms=None)  # type: ignore[arg-type]
    odd.user_agent = "A" * 5000
    odd.document_ids = None  # type: ignore[assignment]
    auditor.record(odd)
    auditor.record(None)  # type: ignore[arg-type]  (logged, not raised)
    auditor.flush()
    assert scalar(url, "SELECT count(*) FROM audit_events") == 1
    assert scalar(url, "SELECT length(user_agent) FROM audit_events") == 512
    assert auditor.verify().ok


def test_values_a_backend_refuses_are_cleaned_not_blocking(auditor: Auditor, url: str) -> None:
    for odd in hostile_events():
        auditor.record(odd)
    auditor.record(event(1))
    auditor.flush()
    assert auditor.spooled == 0
    assert scalar(url, "SELECT count(*) FROM audit_events") == 6
    assert auditor.verify().ok


def test_restart_continues_the_chain(tmp_path: Path, url: str) -> None:
    first = Auditor(settings_for(tmp_path, url))
    for n in range(10):
        first.record(event(n))
    first.close()
    second = Auditor(settings_for(tmp_path, url))
    for n in range(10, 25):
        second.record(event(n))
    second.close()
    report = second.verify()
    assert report.ok and report.checked == 25


def test_chain_lock_serialises_concurrent_writers(tmp_path: Path, url: str) -> None:
    assert racing_appends(url) == []
    assert scalar(url, "SELECT count(*) FROM audit_events") == 4 * 60 * 5
    assert Auditor(settings_for(tmp_path, url)).verify().ok


def test_two_processes_share_one_chain(tmp_path: Path, url: str) -> None:
    procs = [run_writer_process(tmp_path / f"p{i}", url, 300, f"p{i}") for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    assert scalar(url, "SELECT count(*) FROM audit_events") == 600
    report = Auditor(settings_for(tmp_path, url)).verify()
    assert report.ok and report.checked == 600, report.message


def test_row_edited_by_hand_is_named(auditor: Auditor, url: str) -> None:
    for n in range(20):
        auditor.record(event(n))
    auditor.flush()
    event_id = scalar(url, "SELECT event_id FROM audit_events WHERE seq = 7")
    scalar(url, "UPDATE audit_events SET tokens_out = 0 WHERE seq = 7")
    report = auditor.verify()
    assert not report.ok
    assert (report.first_bad_seq, report.first_bad_event_id) == (7, event_id)
    assert "seq 7" in report.message and event_id in report.message
    assert report.checked == 6


def test_deleted_middle_row_breaks_the_chain(auditor: Auditor, url: str) -> None:
    for n in range(10):
        auditor.record(event(n))
    auditor.flush()
    scalar(url, "DELETE FROM audit_events WHERE seq = 4")
    report = auditor.verify()
    assert not report.ok and report.first_bad_seq == 5


def test_deleted_tail_detected_with_expected_head(auditor: Auditor, url: str) -> None:
    for n in range(10):
        auditor.record(event(n))
    auditor.flush()
    head = auditor.verify().head_hash
    assert auditor.verify(expect_head=head).ok
    scalar(url, "DELETE FROM audit_events WHERE seq >= 9")
    assert auditor.verify().ok  # a shorter chain is still a chain ...
    report = auditor.verify(expect_head=head)
    assert not report.ok and "expected head" in report.message  # ... the kept head says no


def test_filters_are_exact_and_never_cross_tenants(auditor: Auditor) -> None:
    for n in range(30):
        tenant = ("sales", "finance", "sales-eu")[n % 3]
        flags = ["prompt_injection:ignore_instructions"] if n % 10 == 0 else []
        outcome = "denied" if n % 5 == 0 else "ok"
        auditor.record(event(n, tenant=tenant, flags=flags, outcome=outcome))
    auditor.flush()
    finance = auditor.query(AuditFilters(tenant_id="finance"), 1, 1000)
    assert finance.total == 10 and {r.tenant_id for r in finance.rows} == {"finance"}
    sales = auditor.query(AuditFilters(tenant_id="sales"), 1, 1000)
    assert sales.total == 10 and {r.tenant_id for r in sales.rows} == {"sales"}  # not sales-eu
    assert auditor.query(AuditFilters(tenant_id="sale"), 1, 10).total == 0
    assert auditor.query(AuditFilters(tenant_id="%"), 1, 10).total == 0
    by_email = auditor.query(AuditFilters(user="user3@example.org", tenant_id="finance"), 1, 100)
    assert by_email.rows and all(
        r.user_sub == "user-3" and r.tenant_id == "finance" for r in by_email.rows
    )
    flagged = auditor.query(AuditFilters(flagged_only=True), 1, 100)
    assert flagged.total == 3 and all(r.flags for r in flagged.rows)
    # Aggregates respect the tenant filter too.
    tokens = auditor.tokens_per_tenant(AuditFilters(tenant_id="finance"))
    assert [(t.tenant_id, t.requests) for t in tokens] == [("finance", 10)]
    denied = auditor.denied_and_rate_limited(AuditFilters(tenant_id="finance"))
    assert {d.tenant_id for d in denied} == {"finance"} and sum(d.count for d in denied) == 2
    buckets = auditor.requests_per_tenant_over_time(AuditFilters(tenant_id="finance"), "minute")
    assert {b.tenant_id for b in buckets} == {"finance"} and sum(b.count for b in buckets) == 10
    assert "sales" not in auditor.export_csv(AuditFilters(tenant_id="finance")).replace("user", "")


def test_pages_time_window_and_order(auditor: Auditor) -> None:
    for n in range(25):
        auditor.record(event(n))
    auditor.flush()
    page1 = auditor.query(AuditFilters(), 1, 10)
    page3 = auditor.query(AuditFilters(), 3, 10)
    assert page1.total == 25 and [r.seq for r in page1.rows] == list(range(25, 15, -1))
    assert [r.seq for r in page3.rows] == list(range(5, 0, -1))
    future = datetime.now(UTC) + timedelta(hours=1)
    assert auditor.query(AuditFilters(since=future), 1, 10).total == 0
    assert auditor.query(AuditFilters(until=future), 1, 10).total == 25


def test_export_csv_escapes_formulas(auditor: Auditor) -> None:
    auditor.record(event(1, user_agent='=HYPERLINK("http://evil")'))
    auditor.record(event(2))
    auditor.flush()
    rows = list(csv.DictReader(io.StringIO(auditor.export_csv(AuditFilters()))))
    assert [r["seq"] for r in rows] == ["1", "2"]
    assert rows[0]["user_agent"].startswith("'=")
    assert rows[1]["document_ids"] == "doc-2"


def _cli(tmp_path: Path, *args: str) -> object:
    env = {"TENANTLLM_DATA_DIR": str(tmp_path), "TENANTLLM_DATABASE_URL": ""}
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_cli_verify_list_export_and_view_is_audited(tmp_path: Path) -> None:
    url = f"sqlite:///{(tmp_path / 'tenantllm.db').resolve()}"
    upgrade_database(url)
    auditor = Auditor(settings_for(tmp_path, url))
    for n in range(12):
        auditor.record(event(n, tenant=("sales", "finance")[n % 2]))
    auditor.close()

    result = _cli(tmp_path, "audit", "verify")
    assert result.exit_code == 0, result.output
    head = scalar(url, "SELECT hash FROM audit_events WHERE seq = 12")
    assert f"head seq 12 hash {head}" in result.output

    result = _cli(tmp_path, "audit", "list", "--tenant", "finance", "--json", "--since", "1h")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 6 and {x["tenant_id"] for x in lines} == {"finance"}

    out = tmp_path / "export.csv"
    result = _cli(tmp_path, "audit", "export", "--csv", "--tenant", "sales", "--output", str(out))
    assert result.exit_code == 0
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert len(rows) == 6 and {r["tenant_id"] for r in rows} == {"sales"}

    views = Auditor(settings_for(tmp_path, url)).query(AuditFilters(action="audit_view"), 1, 10)
    assert views.total == 3
    assert {r.user_sub for r in views.rows} == {f"local:{getpass.getuser()}"}

    scalar(url, "UPDATE audit_events SET tenant_id = 'finance' WHERE seq = 3")
    result = _cli(tmp_path, "audit", "verify")
    assert result.exit_code == 1
    assert "seq 3" in result.stderr

    result = _cli(tmp_path, "audit", "list", "--since", "yesterday")
    assert result.exit_code == 2 and "--since" in result.output


def test_cli_expect_head_detects_truncation(tmp_path: Path) -> None:
    url = f"sqlite:///{(tmp_path / 'tenantllm.db').resolve()}"
    upgrade_database(url)
    auditor = Auditor(settings_for(tmp_path, url))
    for n in range(5):
        auditor.record(event(n))
    auditor.close()
    head = auditor.verify().head_hash
    assert _cli(tmp_path, "audit", "verify", "--expect-head", head).exit_code == 0
    scalar(url, "DELETE FROM audit_events WHERE seq >= 5")
    result = _cli(tmp_path, "audit", "verify", "--expect-head", head)
    assert result.exit_code == 1 and "expected head" in result.stderr


def test_db_upgrade_cli(tmp_path: Path) -> None:
    result = _cli(tmp_path, "db", "upgrade")
    assert result.exit_code == 0 and "newest migration" in result.output
    url = f"sqlite:///{(tmp_path / 'tenantllm.db').resolve()}"
    assert scalar(url, "SELECT count(*) FROM audit_events") == 0


def test_cli_database_down_is_one_clear_line_and_the_view_is_kept(tmp_path: Path) -> None:
    from tests.fixtures.common import free_port

    down = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"
    env = {"TENANTLLM_DATA_DIR": str(tmp_path), "TENANTLLM_DATABASE_URL": down}
    result = CliRunner().invoke(main, ["audit", "list"], env=env, catch_exceptions=False)
    assert result.exit_code == 1 and "unavailable" in result.stderr
    assert "Traceback" not in result.output
    # The refused view was spooled; the next command (database back) stores it.
    assert _cli(tmp_path, "audit", "list", "--action", "audit_view").exit_code == 0
    url = f"sqlite:///{(tmp_path / 'tenantllm.db').resolve()}"
    outcomes = scalar(url, "SELECT group_concat(outcome) FROM audit_events")
    assert sorted(outcomes.split(",")) == ["error", "ok"]
