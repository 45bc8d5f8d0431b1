"""The browser app: Gradio Blocks mounted at `/` of the FastAPI app (the only gradio importer).

`mount_ui(app, services)` builds the page, turns the public API off (`api_open=False`), lets
chat events run concurrently (the engine batches them; per-tenant caps live in core.limits),
and authenticates every Gradio route with the signed session cookie (`auth_dependency`). Tabs
for auditors and admins are hidden per session; their handlers authorize again. Gradio's own
routes sit behind core/ui/gradio_guard (allow-list, session binding, upload ownership and
caps); monitoring, MCP, PWA and run history are off here as well.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr
from fastapi import FastAPI, Request

from core.auth.principal import logout_token_of, principal_from_request
from core.rbac import allowed_tenants
from core.services import Services
from core.ui.admin_tab import build_admin_tab
from core.ui.audit_tab import build_audit_tab
from core.ui.chat_tab import build_chat_tab
from core.ui.documents_tab import build_documents_tab
from core.ui.feedback_panel import build_feedback_panel
from core.ui.gradio_guard import install_gradio_guard
from core.ui.header import ASSETS, brand_html, identity_html
from core.ui.retention_panel import build_retention_panel
from core.ui.session import may, team_choices, ui_call
from core.ui.usage_tab import build_usage_tab

log = logging.getLogger(__name__)

HEAD = '<meta name="viewport" content="width=device-width, initial-scale=1">'


def theme() -> gr.themes.Base:
    """The project's colours (see assets/theme.css for the rest)."""
    return gr.themes.Soft(
        primary_hue=gr.themes.colors.indigo,
        secondary_hue=gr.themes.colors.teal,
        neutral_hue=gr.themes.colors.slate,
        radius_size=gr.themes.sizes.radius_md,
        # System fonts only: no request to a font CDN (the app runs offline).
        font=["system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"],
    )


def on_load(services: Services, request: gr.Request) -> tuple[Any, ...]:
    """Per session: who is signed in, their teams, and which tabs they may see."""
    with ui_call(services, request) as call:
        principal = call.principal
        choices = team_choices(services, principal)
        first = choices[0][1] if choices else None
        return (
            identity_html(services, principal, logout_token_of(request.request)),
            # People without a team (an auditor, say) get no empty selector.
            gr.update(choices=choices, value=first, visible=bool(choices)),
            # A team admin reads their team's slice: the tab shows for any scope but none.
            gr.Tab(visible=allowed_tenants(principal, "read_audit") != []),
            gr.Tab(visible=allowed_tenants(principal, "read_usage") != []),
            gr.Tab(visible=may(principal, None, "view_admin")),
        )


def delete_cache(services: Services) -> tuple[int, int]:
    """Gradio's own cleanup of uploads and exports: kept at most the upload TTL."""
    ttl = services.settings.ui_upload_ttl_seconds
    return (max(60, ttl // 2), ttl)


def build_blocks(services: Services) -> gr.Blocks:
    """The whole page; every handler re-reads the user from the request."""
    with gr.Blocks(title="tenantllm", delete_cache=delete_cache(services)) as blocks:
        with gr.Row(elem_classes="tl-header", equal_height=True):
            gr.HTML(brand_html(), elem_classes="tl-brand-box")
            team = gr.Dropdown(
                label="Team", choices=[], elem_id="team-select", scale=0, min_width=200
            )
            identity = gr.HTML(elem_id="tl-identity-box")
        with gr.Tabs(elem_id="tl-tabs"):
            with gr.Tab("Chat", id="chat", elem_id="tab-chat"):
                build_chat_tab(services, team)
            with gr.Tab("Documents", id="documents", elem_id="tab-documents"):
                build_documents_tab(services, team)
                build_feedback_panel(services, team)
            with gr.Tab("Audit", id="audit", visible=False, elem_id="tab-audit") as audit_tab:
                audit_fill, audit_inputs, audit_outputs = build_audit_tab(services)
            with gr.Tab("Usage", id="usage", visible=False, elem_id="tab-usage") as usage_tab:
                usage_fill, usage_inputs, usage_outputs = build_usage_tab(services)
            with gr.Tab("Admin", id="admin", visible=False, elem_id="tab-admin") as admin_tab:
                admin_fill, admin_outputs = build_admin_tab(services)
                build_retention_panel(services)

        def load(request: gr.Request) -> tuple[Any, ...]:
            return on_load(services, request)

        private: dict[str, Any] = {"api_visibility": "private"}
        blocks.load(load, None, [identity, team, audit_tab, usage_tab, admin_tab], **private)
        audit_tab.select(
            audit_fill, audit_inputs, audit_outputs, api_name="audit_tab_open", **private
        )
        usage_tab.select(
            usage_fill, usage_inputs, usage_outputs, api_name="usage_tab_open", **private
        )
        admin_tab.select(admin_fill, None, admin_outputs, api_name="admin_tab_open", **private)
    return blocks


def _signed_in_subject(request: Request) -> str | None:
    """Gradio's `auth_dependency`: the signed-in subject, or None (Gradio answers 401)."""
    # Sync and cheap: runs on every Gradio route (STACK_NOTES 1.2).
    principal = principal_from_request(request)
    return principal.subject if principal is not None else None


def mount_ui(app: FastAPI, services: Services) -> FastAPI:
    """Mount the browser app at `/` of `app` and return the app."""
    settings = services.settings
    blocks = build_blocks(services)
    blocks.queue(api_open=False, default_concurrency_limit=max(16, settings.max_num_seqs))
    logo = str(ASSETS / "logo.svg")
    gr.mount_gradio_app(
        app,
        blocks,
        path="/",
        auth_dependency=_signed_in_subject,
        max_file_size=f"{settings.max_upload_mb}mb",
        footer_links=[],
        allowed_paths=[logo],
        show_error=False,
        ssr_mode=False,
        enable_monitoring=False,
        mcp_server=False,
        pwa=False,
        run_history=False,
        favicon_path=logo,
        theme=theme(),
        css_paths=[str(ASSETS / "theme.css")],
        head=HEAD,
    )
    install_gradio_guard(app, services, static_files=[logo])
    return app
