"""On the Documents tab, for team admins (and admins, auditors): answers rated down, per document.

The first place to look when the knowledge base is wrong: for each document of the chosen
team, how many rated answers cited it and how many of those were rated down. The panel is
shown only to those who may read the team's slice of the audit log (`read_audit` on the
team: admins, auditors and, with core/rbac.py's team admins, that team's admins); for
everyone else the event answers nothing, and the table reads only the chosen team's ratings.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from core.chat.feedback import document_feedback
from core.services import Services
from core.ui.session import may, ui_call

COLUMNS = ["Document", "Rated answers citing it", "Rated down", "Share down"]


def feedback_table(services: Services, team: str) -> pd.DataFrame:
    """The chosen team's documents by how often the answers citing them were rated down."""
    stats = document_feedback(services.settings.resolved_database_url, team)
    rows = [[s.filename, s.rated, s.down, f"{s.down_share:.0%}"] for s in stats]
    return pd.DataFrame(rows, columns=COLUMNS)


def show_feedback(
    services: Services, team: str | None, request: gr.Request | None
) -> tuple[Any, ...]:
    """(panel visibility, table): hidden and empty unless the caller may read the team's."""
    with ui_call(services, request) as call:
        if not team or not may(call.principal, team, "read_audit"):
            return gr.update(visible=False), pd.DataFrame([], columns=COLUMNS)
        services.tenants.get(team)
        return gr.update(visible=True), feedback_table(services, team)


def build_feedback_panel(services: Services, team: gr.Dropdown) -> None:
    """Lay out the panel and wire it to the team selector (call inside the Documents tab)."""
    with gr.Accordion(
        "Feedback on answers, per document", open=False, visible=False, elem_id="doc-feedback"
    ) as panel:
        refresh = gr.Button("Refresh", size="sm")
        table = gr.Dataframe(headers=COLUMNS, interactive=False, elem_id="doc-feedback-table")

    def show(team_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        return show_feedback(services, team_id, request)

    private: dict[str, Any] = {"api_visibility": "private"}
    team.change(show, [team], [panel, table], api_name="feedback_by_document", **private)
    refresh.click(show, [team], [panel, table], api_name="feedback_refresh", **private)
