"""End to end in the real app (`tenantllm serve`): its background task judges and delivers.

A sales member probes the audit log until refused 45 times; the app's own deliverer (started
by the lifespan) turns that into an alert row, an auditor sees it in the Audit tab's Alerts
table, and `tenantllm siem status` and the Admin tab show the alert cursor caught up.
"""

from __future__ import annotations

import json
import time

from core.audit.query import AuditFilters
from tests.ui_helpers import app_db_url, gradio_call, make_user, signed_in_client, wait_for_audit

AUDIT_ALL = ["Last 24 hours", "all", "", "", "any", None]


def test_the_app_raises_an_alert_and_shows_it_to_auditors(app_server) -> None:
    prober = make_user(app_server.issuer, ["sales"], prefix="siem-probe")
    with signed_in_client(app_server.base_url, prober) as client:
        for _ in range(45):  # 20 per 5 minutes fire; 45 fire even split by a window boundary
            assert gradio_call(client, "audit_query", AUDIT_ALL)["success"] is False
        refused = gradio_call(client, "audit_query", AUDIT_ALL)
    assert refused["success"] is False and prober not in str(refused.get("output"))
    db = app_db_url(app_server.data_dir)
    alerts = wait_for_audit(db, AuditFilters(action="alert", user=prober), deadline_s=120)
    assert alerts, "the app's background task raised no alert"
    assert {a.flags[0] for a in alerts} == {"alert:repeated_denials"} and len(alerts) <= 2
    assert alerts[0].tenant_id is None and "denied requests" in (alerts[0].detail or "")
    auditor = make_user(app_server.issuer, ["auditors"], prefix="siem-aud")
    with signed_in_client(app_server.base_url, auditor) as client:
        shown = gradio_call(client, "audit_query", AUDIT_ALL)
    assert shown["success"] is True, shown
    alerts_table = shown["output"]["data"][-1]
    assert any(prober in str(row) and "repeated_denials" in row for row in alerts_table["data"])
    deadline = time.monotonic() + 60
    while True:  # the cursor follows the head within a poll interval or two
        done = app_server.cli("siem", "status", "--json")
        assert done.returncode == 0, done.stderr
        status = {json.loads(line)["name"]: json.loads(line) for line in done.stdout.splitlines()}
        if status["alerts"]["rows_behind"] < 5 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert status["alerts"]["updated_at"] is not None and status["alerts"]["rows_behind"] < 5
    admin = make_user(app_server.issuer, ["admins"], prefix="siem-adm")
    with signed_in_client(app_server.base_url, admin) as client:
        overview = gradio_call(client, "admin_overview", [])
    assert overview["success"] is True, overview
    assert "alerts (alerts): at seq" in str(overview["output"]["data"][-1])
