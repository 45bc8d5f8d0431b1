"""The anomaly rules: recorded sequences replayed into a real audit log, then judged.

Each test checks which alerts fire AND which do not; alerts are audit rows (action
`alert`), judged once per row across restarts, stored once per window.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from core.audit.auditor import AuditEvent
from core.audit.query import AuditFilters, iter_records
from core.siem.alerts import AlertConsumer
from core.siem.cursor import rows_after
from core.siem.rules import rules_from_settings
from tests.siem.helpers import cursor_at, deliver, replay, siem_settings

NOON = datetime(2026, 12, 1, 12, 0, 5, tzinfo=UTC)  # office hours, 5 s into a window
NIGHT = datetime(2026, 12, 1, 3, 0, 5, tzinfo=UTC)


def _settings(tmp_path: Path, url: str, **values: Any) -> Any:
    """Small thresholds; the rules' cursor is created first (at the empty log's head)."""
    values = {
        "alert_denials": "5/5 minutes",
        "alert_bad_credentials": "10/minute",
        "alert_injection": "1/hour",
        "alert_many_teams": "3/hour",
        "alert_rate_limits": "6/5 minutes",
        "alert_office_hours_utc": "07-19",
        **values,
    }
    settings = siem_settings(tmp_path, url, alerts_enabled=True, **values)
    if cursor_at(url, "alerts") == 0:
        deliver(settings)  # the deployment runs before the events happen
    return settings


def _alerts(url: str) -> list[Any]:
    return list(iter_records(url, AuditFilters(action="alert")))


def _fired(url: str) -> list[str]:
    return sorted(r.flags[0].removeprefix("alert:") for r in _alerts(url))


def _denied(who: str, ip: str = "10.0.0.5", **fields: Any) -> AuditEvent:
    return AuditEvent(
        action="chat",
        outcome="denied",
        status=403,
        user_sub=who,
        tenant_id="finance",
        client_ip=ip,
        error_class="PermissionDenied",
        **fields,
    )


def _every(seconds: float, start: datetime, events: list[AuditEvent]) -> list[Any]:
    return [(start + timedelta(seconds=i * seconds), e) for i, e in enumerate(events)]


def test_repeated_denials_fire_once_per_window(tmp_path: Path, db_url: str) -> None:
    settings = _settings(tmp_path, db_url)
    replay(db_url, _every(1, NOON, [_denied("mallory") for _ in range(4)]))
    deliver(settings)
    assert _fired(db_url) == []  # 4 < 5
    replay(db_url, _every(1, NOON + timedelta(seconds=10), [_denied("mallory") for _ in range(9)]))
    deliver(settings)
    # The principal and the address each crossed 5 once; 8 more in the window: no more.
    assert _fired(db_url) == ["repeated_denials", "repeated_denials"]
    keys = {(a.user_sub, a.client_ip) for a in _alerts(db_url)}
    assert keys == {("mallory", "10.0.0.5"), (None, "10.0.0.5")}
    assert {a.tenant_id for a in _alerts(db_url)} == {None}  # about a principal, not a team
    replay(db_url, _every(1, NOON + timedelta(minutes=5), [_denied("mallory", "10.0.0.6")] * 5))
    deliver(settings)
    assert _fired(db_url).count("repeated_denials") == 4  # the next window, new address


def test_bad_credentials_count_summaries_and_are_not_denials(tmp_path: Path, db_url: str) -> None:
    settings = _settings(tmp_path, db_url)
    bad = AuditEvent(
        action="bearer_auth",
        outcome="denied",
        status=401,
        client_ip="10.9.9.9",
        error_class="NotAuthenticated",
    )
    summary = AuditEvent(
        action="bearer_auth",
        outcome="denied",
        status=401,
        client_ip="10.9.9.9",
        error_class="NotAuthenticated",
        flags=["aggregated", "count=7"],
    )
    other = AuditEvent(action="bearer_auth", outcome="denied", status=401, client_ip="10.1.1.1")
    replay(db_url, _every(1, NOON, [bad, bad, other, summary]))
    deliver(settings)
    assert _fired(db_url) == []  # 9 from 10.9.9.9
    replay(db_url, [(NOON + timedelta(seconds=20), bad)])
    deliver(settings)
    [alert] = _alerts(db_url)
    assert alert.flags == ["alert:bad_credentials", "events=10"]
    assert alert.client_ip == "10.9.9.9" and "10 refused credentials" in (alert.detail or "")


def test_injection_and_rate_limit_storms_name_their_team(tmp_path: Path, db_url: str) -> None:
    settings = _settings(tmp_path, db_url)
    flagged = AuditEvent(
        action="chat",
        outcome="ok",
        user_sub="eve",
        tenant_id="sales",
        flags=["prompt_injection:system_prompt_extraction"],
    )
    plain = AuditEvent(
        action="chat",
        outcome="ok",
        user_sub="eve",
        tenant_id="sales",
        flags=["budget_exceeded_soon"],
    )
    limited = AuditEvent(
        action="api_chat",
        outcome="rate_limited",
        status=429,
        user_sub="bob",
        tenant_id="finance",
        flags=["budget_exceeded"],
    )
    replay(db_url, _every(1, NOON, [plain, flagged, flagged, *[limited] * 5]))
    deliver(settings)
    assert _fired(db_url) == ["prompt_injection"]  # once per hour; 5 rate limits < 6
    replay(db_url, [(NOON + timedelta(seconds=30), limited)])
    deliver(settings)
    assert _fired(db_url) == ["prompt_injection", "rate_limit_storm"]
    by_rule = {a.flags[0]: a for a in _alerts(db_url)}
    assert by_rule["alert:prompt_injection"].tenant_id == "sales"
    assert by_rule["alert:prompt_injection"].user_sub == "eve"
    assert by_rule["alert:rate_limit_storm"].tenant_id == "finance"
    assert by_rule["alert:rate_limit_storm"].user_sub is None


def test_one_principal_touching_many_teams(tmp_path: Path, db_url: str) -> None:
    settings = _settings(tmp_path, db_url)

    def turn(who: str, team: str) -> AuditEvent:
        return AuditEvent(action="chat", outcome="ok", user_sub=who, tenant_id=team)

    teams = ["sales", "finance", "sales", "finance"]
    replay(db_url, _every(60, NOON, [turn("carol", t) for t in teams]))
    deliver(settings)
    assert _fired(db_url) == []  # two teams, many times
    replay(db_url, [(NOON + timedelta(minutes=10), turn("carol", "development"))])
    replay(db_url, [(NOON + timedelta(minutes=11), turn("dave", "development"))])
    deliver(settings)
    [alert] = _alerts(db_url)
    assert alert.flags == ["alert:many_teams", "events=3"] and alert.user_sub == "carol"


def test_off_hours_admin_actions(tmp_path: Path, db_url: str) -> None:
    settings = _settings(tmp_path, db_url)
    admin = AuditEvent(
        action="api_key_create", outcome="ok", user_sub="local:root", tenant_id="sales"
    )
    chat = AuditEvent(action="chat", outcome="ok", user_sub="local:root", tenant_id="sales")
    replay(db_url, [(NOON, admin), (NIGHT, chat)])
    deliver(settings)
    assert _fired(db_url) == []  # an admin action at noon, a chat at night
    replay(db_url, [(NIGHT, admin), (NIGHT + timedelta(minutes=1), admin)])
    deliver(settings)
    [alert] = _alerts(db_url)
    assert alert.flags[0] == "alert:off_hours_admin" and alert.user_sub == "local:root"
    off = siem_settings(tmp_path, db_url, alerts_enabled=True, alert_office_hours_utc="")
    assert "off_hours_admin" not in {r.name for r in rules_from_settings(off)}


def test_alerts_do_not_trigger_alerts(tmp_path: Path, db_url: str) -> None:
    # An alert row is `denied`, from the address, for the principal: a rule that read it would
    # count it as the second denial and fire again, forever.
    settings = _settings(tmp_path, db_url, alert_denials="2/hour")
    replay(db_url, _every(1, NOON, [_denied("mallory"), _denied("mallory")]))
    deliver(settings)
    deliver(settings)
    deliver(settings)
    assert _fired(db_url) == ["repeated_denials", "repeated_denials"]
    assert cursor_at(db_url, "alerts") == 4  # the alert rows were read, and judged harmless


def test_a_restart_mid_window_keeps_counting(tmp_path: Path, db_url: str) -> None:
    settings = _settings(tmp_path, db_url, alert_denials="5/hour")
    replay(db_url, _every(1, NOON, [_denied("mallory", "10.0.0.1") for _ in range(3)]))
    deliver(settings)  # judged 3 rows, then the process ends
    replay(db_url, _every(1, NOON + timedelta(minutes=20), [_denied("mallory", "10.0.0.2")] * 2))
    deliver(settings)  # a new process: the first three still count (rebuilt from the log)
    [alert] = [a for a in _alerts(db_url) if a.user_sub]
    assert alert.flags == ["alert:repeated_denials", "events=5"]
    assert cursor_at(db_url, "alerts") == 6


def test_a_crash_before_the_cursor_moved_stores_no_second_alert(
    tmp_path: Path, db_url: str
) -> None:
    settings = _settings(tmp_path, db_url)
    replay(db_url, _every(1, NOON, [_denied("mallory") for _ in range(5)]))
    # A consumer that judged the rows and wrote its alerts, then died before moving the cursor.
    crashed = AlertConsumer(db_url, rules_from_settings(settings))
    crashed.deliver(rows_after(db_url, 0, 100))
    assert crashed.written == 2 and cursor_at(db_url, "alerts") == 0
    deliver(settings)  # the next process judges the same rows again: same ids, stored once
    assert _fired(db_url) == ["repeated_denials", "repeated_denials"]
    assert cursor_at(db_url, "alerts") == 7


def test_new_rules_judge_from_the_head_not_the_history(tmp_path: Path, db_url: str) -> None:
    replay(db_url, _every(1, NOON, [_denied("mallory") for _ in range(30)]))
    settings = siem_settings(tmp_path, db_url, alerts_enabled=True, alert_denials="5/hour")
    deliver(settings)  # alerts just turned on: last year's storms page nobody
    assert _fired(db_url) == [] and cursor_at(db_url, "alerts") == 30
    replay(db_url, _every(1, NOON + timedelta(seconds=40), [_denied("mallory")] * 5))
    deliver(settings)
    # The open window was rebuilt from the rows before the cursor (31 denials at the first new
    # row) and never alerted: the storm is still on, so that row fires, once.
    assert _fired(db_url) == ["repeated_denials", "repeated_denials"]
    assert {a.flags[1] for a in _alerts(db_url)} == {"events=31"}
