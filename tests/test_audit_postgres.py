"""The audit log on the real PostgreSQL (127.0.0.1:5432): counts, chain, outage, two processes.

Each test gets its own database (created and dropped), so reruns start clean. These tests
fail, never skip, when PostgreSQL is absent: CI runs it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from core.audit.auditor import AuditFilters, Auditor
from tests.audit_helpers import (
    PG_ADMIN,
    Load,
    event,
    hostile_events,
    pg_database,
    racing_appends,
    record_concurrently,
    refused_http_burst,
    run_writer_process,
    scalar,
    settings_for,
    wait_for,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
def url() -> Iterator[str]:
    with pg_database() as database_url:
        yield database_url


@pytest.fixture
def auditor(tmp_path: Path, url: str) -> Iterator[Auditor]:
    auditor = Auditor(settings_for(tmp_path, url))
    yield auditor
    auditor.close()


def _set_database_up(url: str, up: bool) -> None:
    """Really take the database away (refuse connections, kill sessions) or give it back."""
    name = url.rsplit("/", 1)[-1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {str(up).lower()}')
        if not up:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )


def test_500_concurrent_records_exactly_500_events(auditor: Auditor, url: str) -> None:
    record_concurrently(auditor, 500)
    auditor.flush()
    assert scalar(url, "SELECT count(*) FROM audit_events") == 500
    assert scalar(url, "SELECT count(DISTINCT request_id) FROM audit_events") == 500
    assert scalar(url, "SELECT max(seq) FROM audit_events") == 500
    report = auditor.verify()
    assert report.ok and report.checked == 500, report.message


async def test_500_concurrent_http_requests_exactly_500_events(tmp_path: Path, url: str) -> None:
    auditor = await refused_http_burst(settings_for(tmp_path, url), 500)
    assert scalar(url, "SELECT count(*) FROM audit_events WHERE outcome = 'denied'") == 500
    assert scalar(url, "SELECT count(DISTINCT user_agent) FROM audit_events") == 500
    assert auditor.verify().ok
    auditor.close()


def test_chain_lock_serialises_concurrent_writers(tmp_path: Path, url: str) -> None:
    assert racing_appends(url) == []
    assert scalar(url, "SELECT count(*) FROM audit_events") == 4 * 60 * 5
    assert Auditor(settings_for(tmp_path, url)).verify().ok


def test_two_processes_share_one_chain(tmp_path: Path, url: str) -> None:
    procs = [run_writer_process(tmp_path / f"p{i}", url, 400, f"p{i}") for i in range(3)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    assert scalar(url, "SELECT count(*) FROM audit_events") == 1200
    report = Auditor(settings_for(tmp_path, url)).verify()
    assert report.ok and report.checked == 1200, report.message


def test_database_down_mid_load_spools_and_replays(auditor: Auditor, url: str) -> None:
    load = Load(auditor)
    try:
        wait_for(lambda: scalar(url, "SELECT count(*) FROM audit_events") >= 40, "first rows")
        _set_database_up(url, False)
        wait_for(lambda: auditor.spooled > 0, "events spooled")
        _set_database_up(url, True)
        wait_for(lambda: auditor.spooled == 0, "spool replayed while the load goes on")
    finally:
        _set_database_up(url, True)
        total = load.finish()
    auditor.flush()
    assert scalar(url, "SELECT count(*) FROM audit_events") == total
    assert scalar(url, "SELECT count(DISTINCT request_id) FROM audit_events") == total
    report = auditor.verify()
    assert report.ok and report.checked == total, report.message


def test_row_edited_by_hand_is_named(auditor: Auditor, url: str) -> None:
    for n in range(15):
        auditor.record(event(n))
    auditor.flush()
    event_id = scalar(url, "SELECT event_id FROM audit_events WHERE seq = 11")
    scalar(url, "UPDATE audit_events SET user_email = 'mallory@example.org' WHERE seq = 11")
    report = auditor.verify()
    assert not report.ok and report.first_bad_seq == 11
    assert event_id in report.message


def test_queries_never_cross_tenants(auditor: Auditor) -> None:
    for n in range(40):
        auditor.record(event(n, tenant=("sales", "finance")[n % 2], outcome="denied"))
    auditor.flush()
    page = auditor.query(AuditFilters(tenant_id="sales"), 1, 1000)
    assert page.total == 20 and {r.tenant_id for r in page.rows} == {"sales"}
    buckets = auditor.requests_per_tenant_over_time(AuditFilters(tenant_id="finance"), "hour")
    assert {b.tenant_id for b in buckets} == {"finance"} and sum(b.count for b in buckets) == 20
    denied = auditor.denied_and_rate_limited(AuditFilters(tenant_id="finance"))
    assert [(d.tenant_id, d.outcome, d.count) for d in denied] == [("finance", "denied", 20)]


def test_values_postgres_refuses_are_cleaned_not_blocking(auditor: Auditor, url: str) -> None:
    for odd in hostile_events():
        auditor.record(odd)
    auditor.record(event(1))
    auditor.flush()
    assert auditor.spooled == 0
    assert scalar(url, "SELECT count(*) FROM audit_events") == 6
    assert auditor.verify().ok
