"""The Usage tab (admins: every team; team admins: their team): chart, table and CSV download.

Tokens in and out, requests and distinct users per team or per member and UTC day, from the
audit log (core/usage says which rows count). The tab is hidden for everyone else (its
visibility is set per session at page load) and every handler authorizes `read_usage` again
and passes the caller's teams to the query, which filters in SQL: the events are callable
over HTTP by any signed-in session, so hiding is not the protection. Each view is audited
(`usage_view`, `usage_export`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from core.audit.auditor import AuditEvent
from core.budgets.admin import budget_report, check_budget_change, set_budget
from core.budgets.store import changes_summary
from core.errors import InvalidRequest
from core.rbac import allowed_tenants
from core.services import Services
from core.ui.session import UiCall, ui_call
from core.usage.export import csv_text
from core.usage.query import UsageQuery, UsageRow, usage_rows

RANGES = {"Last 7 days": 7, "Last 30 days": 30, "Last 90 days": 90, "This month": 0}
GROUPINGS = {"team": "Per team", "user": "Per member"}
TABLE_COLUMNS = ["day", "team", "member", "tokens in", "tokens out", "requests", "users"]


@dataclass(frozen=True)
class UsageInput:
    """The widgets' values as the page sent them (validated before use)."""

    time_range: str
    by: str
    team: str


def to_query(f: UsageInput, now: datetime | None = None, *, per_day: bool = True) -> UsageQuery:
    """A validated query: unknown choices are refused instead of silently widened."""
    if f.time_range not in RANGES or f.by not in GROUPINGS:
        raise InvalidRequest("Unknown time range or grouping.")
    now = now or datetime.now(UTC)
    days = RANGES[f.time_range]
    start = now - timedelta(days=days) if days else now.replace(day=1, hour=0, minute=0)
    since = start.replace(second=0, microsecond=0)
    team = None if f.team in ("", "all", None) else f.team
    return UsageQuery(since=since, by=f.by, per_day=per_day, tenant_id=team)  # type: ignore[arg-type]


def scoped(
    call: UiCall, f: UsageInput, *, per_day: bool = True
) -> tuple[UsageQuery, list[str] | None]:
    """The query and the caller's teams; a refusal is audited before it is raised.

    An admin reads every team; a team admin their teams (all of them for "All teams", the
    one asked for otherwise; another team is refused).
    """
    query = to_query(f, per_day=per_day)
    tenants = allowed_tenants(call.principal, "read_usage")
    if tenants == []:
        call.check(None, "read_usage")  # no team's usage either: refused
    if tenants is not None and query.tenant_id is not None:
        call.check(query.tenant_id, "read_usage")
    return query, tenants


def _who(row: UsageRow) -> str:
    return row.email or row.user or ""


def table_view(rows: list[UsageRow], by: str) -> pd.DataFrame:
    """One line per day and team (or member), newest day first."""
    lines = [
        [r.day, r.tenant_id, _who(r) if by == "user" else "", r.tokens_in, r.tokens_out,
         r.requests, r.users]
        for r in reversed(rows)
    ]  # fmt: skip
    return pd.DataFrame(lines, columns=TABLE_COLUMNS)


def chart_view(rows: list[UsageRow]) -> pd.DataFrame:
    """Tokens per day, one colour per team (per member too: the table splits by member).

    Gradio's BarPlot kept the colour domain of its first value and painted no bar whose colour
    was not in it (switching to members showed axes and an old legend only), so the colours
    stay the teams, which do not change while the page is open.
    """
    lines = [[r.day, r.tenant_id, r.tokens] for r in rows]
    frame = pd.DataFrame(lines, columns=["day", "who", "tokens"])
    return frame.groupby(["day", "who"], as_index=False)["tokens"].sum()


def summary(totals: list[UsageRow]) -> str:
    """The window's sums, one line per team."""
    if not totals:
        return "No chat turns in this window."
    return "\n".join(
        f"- **{t.tenant_id}**: {t.requests:,} requests · {t.tokens_in:,} tokens in · "
        f"{t.tokens_out:,} tokens out · {t.users:,} members"
        for t in totals
    )


def load(services: Services, f: UsageInput, request: gr.Request | None) -> tuple[Any, ...]:
    """Chart, table and sums for these choices; the viewing is audited (`usage_view`)."""
    with ui_call(services, request) as call:
        url = services.settings.resolved_database_url
        query, tenants = scoped(call, f)
        rows = usage_rows(url, query, tenants=tenants)
        totals_query, _ = scoped(call, UsageInput(f.time_range, "team", f.team), per_day=False)
        totals = usage_rows(url, totals_query, tenants=tenants)
        call.record_ok("usage_view", query.tenant_id, f"{f.time_range} by {f.by}")
        return chart_view(rows), table_view(rows, f.by), summary(totals)


def export(services: Services, f: UsageInput, request: gr.Request | None) -> Any:
    """The rows on screen as a CSV file (audited as `usage_export`)."""
    with ui_call(services, request) as call:
        query, tenants = scoped(call, f)
        rows = usage_rows(services.settings.resolved_database_url, query, tenants=tenants)
        out = Path(tempfile.mkdtemp(prefix="tl-usage-")) / "usage.csv"
        out.write_text(csv_text(rows), encoding="utf-8")
        call.record_ok("usage_export", query.tenant_id, f"{len(rows)} rows")
        return gr.update(value=str(out), visible=True)


BUDGET_COLUMNS = ["member", "daily", "monthly", "member daily", "member monthly", "used today",
                  "used this month"]  # fmt: skip


def budgets_view(services: Services, team: str) -> pd.DataFrame:
    """The team's budget rows (`budget_report` reads that team's rows only)."""
    rows = budget_report(services.settings.resolved_database_url, team)
    lines = [
        ["(team)" if r.subject == "*" else r.subject, r.daily, r.monthly, r.member_daily,
         r.member_monthly, r.used_today, r.used_this_month]
        for r in rows
    ]  # fmt: skip
    return pd.DataFrame(lines, columns=BUDGET_COLUMNS)


def parse_budget(label: str, text: str | None) -> tuple[bool, int | None]:
    """A budget box: (given, value); empty is not given, `off` is None (no budget)."""
    value = (text or "").strip().lower().replace(",", "").replace("_", "")
    if not value:
        return False, None
    if value == "off":
        return True, None
    if not value.isdigit():
        raise InvalidRequest(f"{label} takes a number of tokens or 'off', not '{text}'.")
    return True, int(value)


def _refused(call: UiCall, team: str, exc: InvalidRequest) -> None:
    call.services.auditor.record(
        AuditEvent.from_request(
            call.request, action="budget_set", outcome="error", principal=call.principal,
            tenant_id=team, status=exc.status, error_class=type(exc).__name__,
            detail=exc.message[:500],
        )
    )  # fmt: skip


def set_member_budget(
    services: Services, team: str, user: str, daily: str, monthly: str, request: gr.Request | None
) -> pd.DataFrame:
    """Set one member's budget (or, without a member, the default per member) of one team.

    A team admin's change must fit under the team's own budget (core/budgets/admin.py);
    a refused change stores nothing and is audited.
    """
    with ui_call(services, request) as call:
        if team in ("", "all", None):
            raise InvalidRequest("Choose the team whose member budgets to set.")
        call.check(team, "manage_member_budgets")
        member = (user or "").strip() or None
        names = ("daily", "monthly") if member else ("member_daily", "member_monthly")
        boxes = (parse_budget("Daily", daily), parse_budget("Monthly", monthly))
        changes = {name: value for name, (given, value) in zip(names, boxes, strict=True) if given}
        url = services.settings.resolved_database_url
        try:
            check_budget_change(url, call.principal, team, changes, user=member)
        except InvalidRequest as exc:
            _refused(call, team, exc)
            raise
        set_budget(url, team, changes, user=member, actor=call.principal.subject)
        call.record_ok("budget_set", team, f"{member or 'members'}: {changes_summary(changes)}")
        return budgets_view(services, team)


def build_usage_tab(services: Services) -> tuple[Callable[..., Any], list[Any], list[Any]]:
    """Lay out the Usage tab and wire it; returns (fill function, its inputs, its outputs)."""
    teams = [("All teams", "all")] + [(t.display_name, t.id) for t in services.tenants.all()]
    with gr.Row():
        time_range = gr.Dropdown(list(RANGES), value="Last 30 days", label="Time range")
        by = gr.Radio([(v, k) for k, v in GROUPINGS.items()], value="team", label="Group")
        team = gr.Dropdown(teams, value="all", label="Team", elem_id="usage-team")
    with gr.Row():
        apply_btn = gr.Button("Show", variant="primary", elem_id="usage-apply")
        export_btn = gr.Button("Download CSV", elem_id="usage-export")
    export_file = gr.File(label="CSV", interactive=False, visible=False, elem_id="usage-file")
    chart = gr.BarPlot(
        x="day", y="tokens", color="who", title="Tokens per day", sort="x", elem_id="usage-chart"
    )
    totals = gr.Markdown(elem_id="usage-summary")
    table = gr.Dataframe(
        headers=TABLE_COLUMNS, label="Usage per day", interactive=False, elem_id="usage-table"
    )
    inputs, outputs = [time_range, by, team], [chart, table, totals]
    budget_inputs, budget_btn, budgets = _budget_rows()

    def show(tr: str, b: str, tm: str, request: gr.Request) -> tuple[Any, ...]:
        return load(services, UsageInput(tr, b, tm), request)

    def csv(tr: str, b: str, tm: str, request: gr.Request) -> Any:
        return export(services, UsageInput(tr, b, tm), request)

    private: dict[str, Any] = {"api_visibility": "private"}
    apply_btn.click(show, inputs, outputs, api_name="usage_query", **private)
    export_btn.click(csv, inputs, [export_file], api_name="usage_export", **private)

    def budget(tm: str, u: str, d: str, m: str, request: gr.Request) -> pd.DataFrame:
        return set_member_budget(services, tm, u, d, m, request)

    budget_btn.click(
        budget, [team, *budget_inputs], [budgets], api_name="usage_set_budget", **private
    )
    return show, inputs, outputs


def _budget_rows() -> tuple[list[Any], gr.Button, gr.Dataframe]:
    """The member-budget form (team admins and admins): for the team chosen above."""
    with gr.Accordion("Member budgets (tokens; empty: unchanged, off: none)", open=False):
        with gr.Row():
            user = gr.Textbox(label="Member (subject; empty: default per member)", max_length=255)
            daily = gr.Textbox(label="Daily", max_length=24)
            monthly = gr.Textbox(label="Monthly", max_length=24)
            button = gr.Button("Set budget", elem_id="usage-set-budget")
        budgets = gr.Dataframe(headers=BUDGET_COLUMNS, label="Budgets", interactive=False)
    return [user, daily, monthly], button, budgets
