"""The Usage tab in a real browser: a sales team admin sees sales usage, chart, table and CSV.

Real Chromium, real sign-in, the real app (tests/fixtures/app_server.py). Two chat turns'
audit rows (one per team) are written to the app's database by a second writer first, as
another replica would. Screenshot: test-artifacts/screenshots/usage.png.
"""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest

from core.audit.auditor import AuditEvent, Auditor
from core.config import Settings
from tests.fixtures.browser import screenshot, sign_in
from tests.ui_helpers import app_db_url, make_user

pytestmark = [pytest.mark.browser, pytest.mark.engine]


def _chat_rows(app_server: Any, sales_user: str, finance_user: str) -> None:
    settings = Settings(
        data_dir=Path(tempfile.mkdtemp()), database_url=app_db_url(app_server.data_dir)
    )
    auditor = Auditor(settings)
    for user, team, tokens in ((sales_user, "sales", 321), (finance_user, "finance", 654)):
        auditor.record(
            AuditEvent(action="chat", outcome="ok", user_sub=user, user_email=f"{user}@x.org",
                       tenant_id=team, tokens_in=tokens, tokens_out=9)
        )  # fmt: skip
    auditor.close()


def test_team_admin_sees_their_teams_usage(new_context, app_server) -> None:
    sales_user = make_user(app_server.issuer, ["sales"], prefix="usagesales")
    finance_user = make_user(app_server.issuer, ["finance"], prefix="usagefin")
    _chat_rows(app_server, sales_user, finance_user)
    member = new_context().new_page()
    sign_in(member, app_server.base_url, sales_user)
    member.get_by_role("tab", name="Documents").wait_for()
    assert member.get_by_role("tab", name="Usage").count() == 0

    page = new_context().new_page()
    sign_in(page, app_server.base_url, make_user(app_server.issuer, ["sales-admins"]))
    assert page.get_by_role("tab", name="Admin").count() == 0
    page.get_by_role("tab", name="Usage").click()
    page.get_by_role("radio", name="Per member").check()
    page.locator("#usage-apply").click()
    # innerText: what is shown (the grid also keeps hidden cells, for measuring).
    page.wait_for_function(
        "t => (document.querySelector('#usage-table')?.innerText || '').includes(t)",
        arg=sales_user,
        timeout=60_000,
    )
    # The chart colours by team (the table splits by member): its legend names sales only.
    page.wait_for_function(
        "t => (document.querySelector('#usage-chart')?.innerHTML || '').includes(t)",
        arg="sales",
        timeout=60_000,
    )
    shown = page.locator("#tab-usage").inner_text()
    assert "finance" not in shown.lower() and finance_user not in shown
    assert "321" in page.locator("#usage-table").inner_text()
    screenshot(page, "usage", full_page=True)

    page.locator("#usage-export").click()
    link = page.locator("#usage-file a").first
    link.wait_for(timeout=60_000)
    answer = page.request.get(urljoin(page.url, str(link.get_attribute("href"))))
    assert answer.ok, answer.status
    lines = list(csv.DictReader(io.StringIO(answer.text())))
    assert {line["team"] for line in lines} == {"sales"}
    assert any(line["user"] == sales_user and line["tokens_in"] == "321" for line in lines)
