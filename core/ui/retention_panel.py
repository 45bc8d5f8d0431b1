"""On the Admin tab: each team's retention in effect, and an admin's override of it.

Admins only (`view_admin`, checked again by every handler, like the rest of the tab). The
same policy functions as `tenantllm retention set|show` (core/retention/policy.py); every
change is audited (`retention_set`).
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from core.retention.policy import RetentionPolicy, parse_days, policies, set_override
from core.services import Services
from core.ui.session import ui_call

COLUMNS = ["team", "conversations", "conversations set by", "prompt text", "prompt text set by"]


def _days(value: int | None) -> str:
    return "keep" if value is None else f"{value} days"


def retention_frame(services: Services) -> pd.DataFrame:
    """Every team's policy in effect and where each part comes from (plugin or admin)."""
    found: list[RetentionPolicy] = policies(
        services.settings.resolved_database_url, services.tenants.all()
    )
    rows = [
        [
            p.tenant_id,
            _days(p.conversation_days),
            p.conversation_source,
            _days(p.prompt_text_days),
            p.prompt_text_source,
        ]
        for p in found
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def show_retention(services: Services, request: gr.Request | None) -> pd.DataFrame:
    """The table (admins only)."""
    with ui_call(services, request) as call:
        call.check(None, "view_admin")
        return retention_frame(services)


def save_retention(
    services: Services,
    team: str | None,
    conversations: str,
    prompt_text: str,
    request: gr.Request | None,
) -> pd.DataFrame:
    """Override one team's retention (empty fields are left as they are); admins only."""
    with ui_call(services, request) as call:
        call.check(None, "view_admin")
        tenant = services.tenants.get(team or "")
        asked = {"conversation_days": conversations, "prompt_text_days": prompt_text}
        flags = {"conversation_days": "Conversations", "prompt_text_days": "Prompt text"}
        changes = {k: parse_days(flags[k], v) for k, v in asked.items() if (v or "").strip()}
        policy = set_override(
            services.settings.resolved_database_url,
            tenant,
            changes,
            actor=call.principal.subject,
        )
        detail = " ".join(f"{k}={v}" for k, v in changes.items())
        call.record_ok("retention_set", tenant.id, f"{detail} -> {policy.as_json()}")
        gr.Info("Retention saved.")
        return retention_frame(services)


def build_retention_panel(services: Services) -> None:
    """Lay out the panel and wire it (call inside the Admin tab)."""
    gr.Markdown("### Retention")
    table = gr.Dataframe(headers=COLUMNS, interactive=False, elem_id="admin-retention")
    with gr.Row():
        team = gr.Dropdown(
            [(t.display_name, t.id) for t in services.tenants.all()], label="Team", scale=2
        )
        conv = gr.Textbox(label="Conversations (days, keep, default)", scale=2)
        text = gr.Textbox(label="Prompt text (days, keep, default)", scale=2)
        save = gr.Button("Save retention", scale=1)
        refresh = gr.Button("Show retention", size="sm", scale=1)

    def show(request: gr.Request) -> pd.DataFrame:
        return show_retention(services, request)

    def store(t: str | None, c: str, p: str, request: gr.Request) -> pd.DataFrame:
        return save_retention(services, t, c, p, request)

    private: dict[str, Any] = {"api_visibility": "private"}
    refresh.click(show, None, [table], api_name="retention_show", **private)
    save.click(store, [team, conv, text], [table], api_name="retention_save", **private)
