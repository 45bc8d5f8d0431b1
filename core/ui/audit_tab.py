"""The Audit tab (auditors and admins): filters, table, charts, chain status, CSV, injections.

Team admins get their team's slice: rows whose tenant is their team, never another team's
and never the global rows (`scoped_filters`, applied in SQL); the chain status, a fact about
every row, is for auditors and admins. The tab is hidden for everyone else (its visibility
is set per session when the page loads) and every handler authorizes `read_audit` again and
audits the viewing (`audit_view`): the events are callable over HTTP by any signed-in
session, so hiding is not the protection.
"""

from __future__ import annotations

import html
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from core.audit.query import AuditFilters, AuditRecord, Bucket, scoped_to
from core.errors import InvalidRequest
from core.rbac import allowed_tenants
from core.services import Services
from core.ui.audit_alerts import ALERT_COLUMNS, alert_filters, alerts_view
from core.ui.session import UiCall, ui_call

PAGE_SIZE = 50
RANGES = {
    "Last hour": timedelta(hours=1),
    "Last 24 hours": timedelta(days=1),
    "Last 7 days": timedelta(days=7),
    "Last 30 days": timedelta(days=30),
    "All time": None,
}
_LABELS = {"minute": "%H:%M", "hour": "%d %b %H:00", "day": "%d %b"}
OUTCOMES = ["any", "ok", "denied", "error", "rate_limited", "cancelled"]
TABLE_COLUMNS = [
    "time", "user", "team", "action", "outcome", "status", "tokens in", "tokens out", "flags"
]  # fmt: skip


@dataclass(frozen=True)
class FilterInput:
    """The filter widgets' values as the page sent them (validated before use)."""

    time_range: str
    team: str
    user: str
    action: str
    outcome: str


def to_filters(f: FilterInput, *, flagged_only: bool = False) -> AuditFilters:
    """Validated filters: unknown choices are refused instead of silently widened."""
    if f.time_range not in RANGES:
        raise InvalidRequest("Unknown time range.")
    if f.outcome not in OUTCOMES:
        raise InvalidRequest("Unknown outcome.")
    span = RANGES[f.time_range]
    return AuditFilters(
        since=datetime.now(UTC) - span if span else None,
        tenant_id=None if f.team in ("", "all") else f.team,
        user=(f.user or "").strip() or None,
        action=(f.action or "").strip() or None,
        outcome=None if f.outcome == "any" else f.outcome,
        flagged_only=flagged_only,
    )


def scoped_filters(call: UiCall, f: FilterInput, *, flagged_only: bool = False) -> AuditFilters:
    """`to_filters`, limited to the rows the caller may read; a refusal is audited first.

    An auditor or admin reads every row; a team admin only their teams' (all of them for
    "All teams", the one asked for otherwise, and another team is refused).
    """
    filters = to_filters(f, flagged_only=flagged_only)
    tenants = allowed_tenants(call.principal, "read_audit")
    if tenants == []:
        call.check(None, "read_audit")  # no team's rows either: refused
    if tenants is not None and filters.tenant_id is not None:
        call.check(filters.tenant_id, "read_audit")
    return scoped_to(filters, tenants)


def table_view(rows: list[AuditRecord]) -> pd.DataFrame:
    """The columns a person reads, newest first."""
    return pd.DataFrame(
        [
            [
                r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                r.user_email or r.user_sub or "",
                r.tenant_id or "—",
                r.action,
                r.outcome,
                r.status,
                r.tokens_in,
                r.tokens_out,
                ", ".join(r.flags),
            ]
            for r in rows
        ],
        columns=TABLE_COLUMNS,
    )


def _bucket(f: FilterInput) -> Bucket:
    span = RANGES[f.time_range]
    if span is not None and span <= timedelta(hours=1):
        return "minute"
    return "hour" if span is not None and span <= timedelta(days=2) else "day"


def charts(
    services: Services, filters: AuditFilters, bucket: Bucket
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Requests per team over time, refusals per team, tokens per team."""
    auditor = services.auditor
    over_time = pd.DataFrame(
        [
            [c.bucket.strftime(_LABELS[bucket]), c.tenant_id or "(none)", c.count]
            for c in auditor.requests_per_tenant_over_time(filters, bucket)
        ],
        columns=["time", "team", "requests"],
    )
    refusals = pd.DataFrame(
        [
            [c.tenant_id or "(none)", c.outcome, c.count]
            for c in auditor.denied_and_rate_limited(filters)
        ],
        columns=["team", "outcome", "events"],
    )
    tokens = pd.DataFrame(
        [
            [t.tenant_id or "(none)", t.tokens_in + t.tokens_out]
            for t in auditor.tokens_per_tenant(filters)
        ],
        columns=["team", "tokens"],
    )
    return over_time, refusals, tokens


def chain_status(services: Services, principal_reads_all: bool = True) -> str:
    """The hash chain's verification, as one line (for readers of every row only)."""
    if not principal_reads_all:
        return "The audit chain is verified by auditors and admins."
    report = services.auditor.verify()
    if report.ok:
        return (
            '<span class="tl-badge tl-badge-ok">Audit chain intact</span> '
            f"{report.checked} events verified."
        )
    return (
        '<span class="tl-badge tl-badge-bad">Audit chain broken</span> '
        f"at event #{report.first_bad_seq}: {html.escape(report.message)}"
    )


def load(
    services: Services, f: FilterInput, page: int, request: gr.Request | None
) -> tuple[Any, ...]:
    """Everything the tab shows for these filters and page; the viewing is audited."""
    with ui_call(services, request) as call:
        filters = scoped_filters(call, f)
        total = services.auditor.query(filters, page=1, page_size=1).total
        pages = max(1, -(-total // PAGE_SIZE))
        page = min(max(1, page), pages)
        result = services.auditor.query(filters, page=page, page_size=PAGE_SIZE)
        flagged = services.auditor.query(
            scoped_filters(call, f, flagged_only=True), page=1, page_size=PAGE_SIZE
        )
        alerts = services.auditor.query(alert_filters(filters), page=1, page_size=PAGE_SIZE)
        over_time, refusals, tokens = charts(services, filters, _bucket(f))
        call.record_ok("audit_view", None, f"page {page}")
        return (
            table_view(result.rows),
            f"Page {page} of {pages} · {total} events",
            page,
            over_time,
            refusals,
            tokens,
            chain_status(services, filters.tenant_ids is None),
            table_view(flagged.rows),
            alerts_view(alerts.rows),
        )


def export(services: Services, f: FilterInput, request: gr.Request | None) -> Any:
    """The current filter's events as a CSV file (audited as `audit_export`)."""
    with ui_call(services, request) as call:
        csv_text = services.auditor.export_csv(scoped_filters(call, f))
        out = Path(tempfile.mkdtemp(prefix="tl-audit-")) / "audit-export.csv"
        out.write_text(csv_text, encoding="utf-8")
        call.record_ok("audit_export", None)
        return gr.update(value=str(out), visible=True)


@dataclass
class AuditView:
    """The Audit tab's components, for wiring."""

    filters: list[Any]  # time range, team, user, action, outcome (FilterInput's order)
    apply_btn: gr.Button
    export_btn: gr.Button
    export_file: gr.File
    results: list[Any]  # what `load` returns, in its order
    prev_btn: gr.Button
    next_btn: gr.Button
    page: gr.State


def build_audit_tab(services: Services) -> tuple[Callable[..., Any], list[Any], list[Any]]:
    """Lay out the Audit tab's contents and wire them; returns the event that fills it.

    That is (handler, its inputs, its outputs), for the tab's `select` event.
    """
    filters = _filter_row(services)
    with gr.Row():
        apply_btn = gr.Button("Apply filters", variant="primary", elem_id="audit-apply")
        export_btn = gr.Button("Export CSV", elem_id="audit-export")
    export_file = gr.File(label="CSV export", interactive=False, visible=False)
    chain = gr.HTML(elem_id="audit-chain")
    with gr.Row():
        over_time = gr.BarPlot(
            x="time", y="requests", color="team", title="Requests per team over time", sort="x"
        )
        refusals = gr.BarPlot(
            x="team", y="events", color="outcome", title="Denied and rate-limited"
        )
        tokens = gr.BarPlot(x="team", y="tokens", title="Tokens per team")
    table = gr.Dataframe(
        headers=TABLE_COLUMNS, label="Events", interactive=False, elem_id="audit-table"
    )
    with gr.Row():
        prev_btn = gr.Button("← Previous", size="sm", elem_id="audit-prev")
        page_label = gr.Markdown(elem_id="audit-page")
        next_btn = gr.Button("Next →", size="sm", elem_id="audit-next")
    flagged = gr.Dataframe(
        headers=TABLE_COLUMNS,
        label="Flagged events (injection signals, refusal counts)",
        interactive=False,
    )
    alerts = gr.Dataframe(
        headers=ALERT_COLUMNS,
        label="Alerts (anomaly rules: repeated denials, bad credentials, injection, ...)",
        interactive=False,
        wrap=True,
        elem_id="audit-alerts",
    )
    page = gr.State(1)
    results = [table, page_label, page, over_time, refusals, tokens, chain, flagged, alerts]
    view = AuditView(filters, apply_btn, export_btn, export_file, results, prev_btn, next_btn, page)
    return _wire(services, view)


def _filter_row(services: Services) -> list[Any]:
    team_choices = [("All teams", "all")] + [(t.display_name, t.id) for t in services.tenants.all()]
    with gr.Row():
        time_range = gr.Dropdown(list(RANGES), value="Last 24 hours", label="Time range")
        team = gr.Dropdown(team_choices, value="all", label="Team", elem_id="audit-team")
        user = gr.Textbox(label="User (subject or email)", max_length=200)
        action = gr.Textbox(label="Action", max_length=64, placeholder="chat, upload, …")
        outcome = gr.Dropdown(OUTCOMES, value="any", label="Outcome")
    return [time_range, team, user, action, outcome]


def _wire(services: Services, v: AuditView) -> tuple[Callable[..., Any], list[Any], list[Any]]:
    def show(
        tr: str, tm: str, us: str, ac: str, oc: str, pg: int, request: gr.Request
    ) -> tuple[Any, ...]:
        return load(services, FilterInput(tr, tm, us, ac, oc), int(pg or 1), request)

    def csv(tr: str, tm: str, us: str, ac: str, oc: str, request: gr.Request) -> Any:
        return export(services, FilterInput(tr, tm, us, ac, oc), request)

    private: dict[str, Any] = {"api_visibility": "private"}
    first = gr.State(1)
    widgets, outputs, page = v.filters, v.results, v.page
    v.apply_btn.click(show, [*widgets, first], outputs, api_name="audit_query", **private)
    # Named events: tests and the guard's audit rows refer to them by name, not position.
    v.prev_btn.click(
        lambda p: max(1, int(p) - 1),
        [page],
        [page],
        api_name="audit_prev_page",
        **private,
    ).then(show, [*widgets, page], outputs, api_name="audit_show_prev", **private)
    v.next_btn.click(
        lambda p: int(p) + 1, [page], [page], api_name="audit_next_page", **private
    ).then(show, [*widgets, page], outputs, api_name="audit_show_next", **private)
    v.export_btn.click(csv, widgets, [v.export_file], api_name="audit_export", **private)
    return show, [*widgets, first], outputs
