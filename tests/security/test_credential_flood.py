"""Issue 12, items 8 and 9 (bearer part): a flood of refused credentials costs a few audit rows,
still counts every refusal, and each row says where the refusals came from.

Against the real app (`app_server`); rows read from its audit database.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from core.audit.query import AuditFilters, AuditRecord, query
from tests.fixtures.oidc import code_flow_tokens
from tests.ui_helpers import app_db_url, make_user

FLOOD = 200
MAX_ROWS = 12  # a handful: the first few at once, then one summary per window
WINDOW_S = 15  # TENANTLLM_REFUSAL_AUDIT_WINDOW_SECONDS of the app under test (app_server)
ROUTES = ["/v1/models", "/v1/models/sales"]


def _count(row: AuditRecord) -> int:
    for flag in row.flags:
        match = re.fullmatch(r"count=(\d+)", flag)
        if match:
            return int(match.group(1))
    return 1


def _rows_of(db_url: str, user_agent: str) -> list[AuditRecord]:
    filters = AuditFilters(action="bearer_auth", outcome="denied")
    rows = query(db_url, filters, 1, 100).rows
    return [r for r in rows if r.user_agent == user_agent]


def _wait_for_total(db_url: str, user_agent: str, total: int) -> list[AuditRecord]:
    """The rows of `user_agent` once their counts add up to `total` (or the deadline)."""
    deadline = time.monotonic() + WINDOW_S + 90
    rows = _rows_of(db_url, user_agent)
    while sum(map(_count, rows)) < total and time.monotonic() < deadline:
        time.sleep(1)
        rows = _rows_of(db_url, user_agent)
    return rows


def _bad_request(base_url: str, user_agent: str, i: int) -> int:
    token = f"tlm_{secrets.token_urlsafe(24)}" if i % 2 else secrets.token_urlsafe(30)
    answer = httpx.get(
        base_url + ROUTES[i % len(ROUTES)],
        headers={"Authorization": f"Bearer {token}", "User-Agent": user_agent},
        timeout=60,
    )
    assert answer.json()["error"]["code"], answer.text[:200]
    return answer.status_code


def test_flood_of_bad_keys_costs_a_few_rows_and_stays_visible(app_server: Any) -> None:
    db_url = app_db_url(app_server.data_dir)
    user_agent = f"flood-test/{uuid.uuid4().hex[:8]}"
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(
            pool.map(lambda i: _bad_request(app_server.base_url, user_agent, i), range(FLOOD))
        )
    assert statuses == [401] * FLOOD

    # The server still answers, and a real credential still works, right after the flood.
    assert httpx.get(app_server.base_url + "/healthz", timeout=30).status_code == 200
    tokens = code_flow_tokens(app_server.issuer, make_user(app_server.issuer, ["sales"], "fl"))
    models = httpx.get(
        app_server.base_url + "/v1/models",
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
        timeout=60,
    )
    assert models.status_code == 200 and models.json()["data"], models.text[:200]

    rows = _wait_for_total(db_url, user_agent, FLOOD)
    assert sum(map(_count, rows)) == FLOOD, [(r.flags, r.detail) for r in rows]
    assert 2 <= len(rows) <= MAX_ROWS, len(rows)
    # The first refusals were written one by one, with their reason; the rest summed up.
    singles = [r for r in rows if _count(r) == 1]
    reasons = ("API key", "access token")
    assert singles and all(any(w in (r.detail or "") for w in reasons) for r in singles)
    assert any("aggregated" in r.flags for r in rows)
    for row in rows:
        assert row.client_ip == "127.0.0.1", row
        assert row.user_agent == user_agent and row.status == 401


def test_refusal_log_windows_per_address_and_action() -> None:
    from core.audit.refusals import IMMEDIATE_ROWS, Refusal, RefusalLog
    from tests.fixtures.oidc import RecordingAuditor

    sink, now = RecordingAuditor(), [1000.0]
    log = RefusalLog(sink, WINDOW_S, clock=lambda: now[0])

    def refuse(ip: str, n: int, action: str = "bearer_auth") -> None:
        for _ in range(n):
            log.refused(Refusal("This API key is not valid.", "NotAuthenticated", ip, "ua", action))

    refuse("10.0.0.1", 50)
    refuse("10.0.0.2", 2)
    refuse("10.0.0.1", 3, action="api_models")
    assert len(sink.events) == IMMEDIATE_ROWS + 2 + 3  # the first ones at once, each its own
    now[0] += WINDOW_S + 1
    log.flush()
    [summary] = sink.events[IMMEDIATE_ROWS + 5 :]
    assert summary.client_ip == "10.0.0.1" and summary.action == "bearer_auth"
    assert summary.flags == ["aggregated", f"count={50 - IMMEDIATE_ROWS}"]
    refuse("10.0.0.1", 1)  # a new window: visible at once again
    assert sink.events[-1].flags == [] and len(sink.events) == IMMEDIATE_ROWS + 7
