"""The allowance line under the chat, as a member of a budgeted team sees it: real Chromium,
real sign-in, the real app and engine (the app_server fixture).

The budgets are set by the operator's command in another process (`tenantllm budgets set`),
as in production: the line must show them at once, and after one answer it must show
exactly that answer's tokens (as audited) gone from both the member's and the team's rest.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from core.audit.query import AuditFilters
from tests.fixtures.browser import screenshot, sign_in
from tests.test_ui_browser import _ask, _choose_team, _wait_answer_done
from tests.ui_helpers import app_db_url, make_user, wait_for_audit

pytestmark = [pytest.mark.browser, pytest.mark.engine]

LINE = "#chat-allowance"
MEMBER_DAILY = 40_000
TEAM_DAILY = 60_000_000  # far above what the run's other sales turns use
PATTERN = re.compile(r"You: ([\d,]+) tokens left today · Sales: ([\d,]+) tokens left today")


def _numbers(page: Any) -> tuple[int, int]:
    """(member, team) tokens left, as the line under the chat says them."""
    text = page.locator(LINE).inner_text()
    found = PATTERN.search(text)
    assert found, f"the allowance line reads {text!r}"
    return int(found[1].replace(",", "")), int(found[2].replace(",", ""))


def _wait_line(page: Any, js_condition: str, timeout: int = 240_000) -> None:
    """Wait until the line's text satisfies `js_condition` (a JS expression over `t`)."""
    page.wait_for_function(
        f"() => {{ const e = document.querySelector('{LINE}');"
        f" const t = e ? e.innerText : ''; return {js_condition}; }}",
        timeout=timeout,
    )


def _set(app_server: Any, *args: str) -> None:
    done = app_server.cli("budgets", "set", "--tenant", "sales", *args)
    assert done.returncode == 0, done.stderr


def test_allowance_line_shows_member_and_team_and_goes_down(
    new_context: Any, app_server: Any
) -> None:
    sub = make_user(app_server.issuer, ["sales"], prefix="budgeted")
    _set(app_server, "--daily", f"{TEAM_DAILY}")
    _set(app_server, "--user", sub, "--daily", f"{MEMBER_DAILY}")
    page = new_context().new_page()
    sign_in(page, app_server.base_url, sub)
    _choose_team(page, "Sales")
    _wait_line(page, "t.includes('You: ') && t.includes('Sales: ')")
    member, team = _numbers(page)
    assert member == MEMBER_DAILY  # a new member: nothing used yet (seeded from the audit)
    assert 0 < team <= TEAM_DAILY
    screenshot(page, "budget-line-before")

    _ask(page, "What does the sales playbook say about discounts?")
    _wait_answer_done(page)
    _wait_line(page, f"!t.includes('You: {MEMBER_DAILY:,} ')")
    member_after, team_after = _numbers(page)
    (turn,) = wait_for_audit(app_db_url(app_server.data_dir), AuditFilters(user=sub, action="chat"))
    used = turn.tokens_in + turn.tokens_out
    assert turn.outcome == "ok" and used > 0
    assert member_after == MEMBER_DAILY - used
    assert team_after == team - used
    screenshot(page, "budget-line-after")
