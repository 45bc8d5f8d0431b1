"""What the Audit tab's Alerts table returns, per reader: a team's slice never shows another
team's alerts, nor the alerts about principals across teams (tenant NULL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from core.audit.auditor import AuditEvent
from core.audit.query import AuditFilters, query, scoped_to
from core.ui.audit_alerts import alert_filters, alerts_view
from tests.siem.helpers import cursor_at, deliver, replay, siem_settings

NOON = datetime(2026, 12, 1, 12, 0, 5, tzinfo=UTC)


def test_alerts_table_is_scoped_like_the_rows(tmp_path: Path, db_url: str) -> None:
    settings = siem_settings(
        tmp_path, db_url, alerts_enabled=True, alert_injection="1/hour", alert_denials="3/hour"
    )
    deliver(settings)
    assert cursor_at(db_url, "alerts") == 0

    def flagged(who: str, team: str) -> AuditEvent:
        return AuditEvent(action="chat", outcome="ok", user_sub=who, tenant_id=team,
                          flags=["prompt_injection:cross_tenant_request"])  # fmt: skip

    denied = AuditEvent(action="chat", outcome="denied", status=403, user_sub="canary-fin-user",
                        tenant_id="finance", client_ip="10.0.0.8")  # fmt: skip
    events = [flagged("sales-sam", "sales"), flagged("canary-fin-user", "finance"), *[denied] * 3]
    replay(db_url, [(NOON + timedelta(seconds=i), e) for i, e in enumerate(events)])
    deliver(settings)
    everything = query(db_url, alert_filters(AuditFilters()), 1, 50).rows
    assert len(everything) == 4  # 2 injection (one per team), denials: principal + address
    sales_slice = alert_filters(scoped_to(AuditFilters(flagged_only=True), ["sales"]))
    shown = alerts_view(query(db_url, sales_slice, 1, 50).rows)
    assert list(shown["team"]) == ["sales"] and list(shown["about"]) == ["sales-sam"]
    assert "canary" not in shown.to_csv() and "finance" not in shown.to_csv()
    none_slice = alert_filters(scoped_to(AuditFilters(), []))
    assert query(db_url, none_slice, 1, 50).rows == []
