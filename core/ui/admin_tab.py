"""The Admin tab (admins): tenants and plugins, the group mapping, API keys, engine status,
each team's fair share of the engine over the last hour, and the SIEM sinks' lag.

Hidden for everyone else (visibility set per session at page load); every handler authorizes
again (`view_admin`, `manage_keys`). A new key's secret is shown once, in this session's
textbox only, and never stored in plain text (core/auth/apikeys.py keeps a hash).

Outputs are scoped like actions: the key list any handler returns is read for the caller
(`apikeys.visible_keys`), so an editor of sales who creates or revokes a sales key gets the
keys of the teams they manage, never every team's (issue 12, item 2).
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from core.auth import apikeys
from core.errors import InvalidRequest
from core.identity import Principal
from core.services import Services
from core.siem.status import consumer_statuses, summary_line
from core.ui.session import ui_call

KEY_COLUMNS = ["id", "team", "scope", "created by", "created", "expires", "revoked"]


def tenants_frame(services: Services) -> pd.DataFrame:
    """Every tenant with the plugin that registered it and its engine options."""
    rows = [
        [t.id, t.display_name, t.plugin, t.priority, t.top_k or "", t.description]
        for t in services.tenants.all()
    ]
    return pd.DataFrame(rows, columns=["id", "name", "plugin", "priority", "top k", "description"])


def mapping_frame(services: Services) -> pd.DataFrame:
    """The IdP group -> tenant role mapping in effect."""
    rows = [[r.group, r.tenant or "(global)", r.role] for r in services.groups.rules()]
    return pd.DataFrame(rows, columns=["IdP group", "team", "role"])


async def engine_markdown(services: Services) -> str:
    """Model, backend and load of the shared engine."""
    if services.engine is None:
        return "Engine: not running in this process."
    status = await services.engine.status()
    state = "ready" if status.ready else "starting"
    return (
        f"**Engine** `{status.backend}` · model `{status.model}` · {state} · "
        f"{status.running} running, {status.waiting} waiting"
    )


FAIR_SHARE_COLUMNS = [
    "team", "weight", "tokens (1 h)", "turns (1 h)", "queue wait p50 ms", "queue wait p95 ms",
    "refused (1 h)", "running now", "waiting now",
]  # fmt: skip


def fair_share_frame(services: Services) -> pd.DataFrame:
    """Per team: its weight, the last hour's service, waits and refusals in this process."""
    served = {row.tenant_id: row for row in services.scheduler.log.summary()}
    queue = services.scheduler.queue
    rows = []
    for weight in services.scheduler.weights.all():
        team = weight.tenant_id
        s = served.get(team)
        rows.append(
            [
                team,
                f"{weight.weight:g}" + (" (admin)" if weight.source == "admin" else ""),
                s.tokens if s else 0,
                s.turns if s else 0,
                round(s.wait_p50_ms) if s else 0,
                round(s.wait_p95_ms) if s else 0,
                s.refused if s else 0,
                queue.running_of(team),
                queue.waiting(team),
            ]
        )
    return pd.DataFrame(rows, columns=FAIR_SHARE_COLUMNS)


def siem_markdown(services: Services) -> str:
    """Each SIEM sink's (and the alert rules') lag behind the audit log, one line each."""
    statuses = consumer_statuses(services.siem)
    if not statuses:
        return "**SIEM**: no sinks configured (`TENANTLLM_SIEM_SINKS`), alerts off."
    lines = [f"- {html.escape(summary_line(s))}" for s in statuses]
    return "**SIEM delivery** (`tenantllm siem status`)\n\n" + "\n".join(lines)


def keys_frame(services: Services, principal: Principal) -> pd.DataFrame:
    """The API keys of the teams `principal` may manage (never their secrets)."""
    rows = [
        [
            k.id,
            k.tenant_id,
            k.scope,
            k.created_by,
            k.created_at.strftime("%Y-%m-%d %H:%M"),
            k.expires_at.strftime("%Y-%m-%d") if k.expires_at else "never",
            "yes" if k.revoked_at else "",
        ]
        for k in apikeys.visible_keys(services.settings, principal)
    ]
    return pd.DataFrame(rows, columns=KEY_COLUMNS)


async def overview(services: Services, request: gr.Request | None) -> tuple[Any, ...]:
    """Tenants, mapping, keys, engine status and fair share (admins only)."""
    with ui_call(services, request) as call:
        call.check(None, "view_admin")
        return (
            tenants_frame(services),
            mapping_frame(services),
            keys_frame(services, call.principal),
            await engine_markdown(services),
            fair_share_frame(services),
            await asyncio.to_thread(siem_markdown, services),
        )


def create_key(
    services: Services,
    team: str | None,
    scope: str,
    days: float | None,
    request: gr.Request | None,
) -> tuple[Any, ...]:
    """Create a key for one team; its secret is returned once."""
    with ui_call(services, request) as call:
        call.check(team, "manage_keys")
        if not team:
            raise InvalidRequest("Choose the key's team.")
        services.tenants.get(team)
        expires = int(days) if days else None
        created = apikeys.create_key(
            services.settings,
            tenant_id=team,
            scope=scope,
            expires_in_days=expires,
            created_by=call.principal.subject,
        )
        call.record_ok("ui_create_key", team, created.key.id)
        gr.Info("Key created. Copy it now: it is not shown again.")
        return created.secret, keys_frame(services, call.principal)


def revoke_key(services: Services, key_id: str | None, request: gr.Request | None) -> pd.DataFrame:
    """Revoke a key by id: an admin any key, an editor their teams' keys."""
    with ui_call(services, request) as call:
        if apikeys.managed_tenants(call.principal) == []:
            call.check(None, "manage_keys")  # refused and audited
        key_id = (key_id or "").strip()
        if not key_id:
            raise InvalidRequest("Type the id of the key to revoke.")
        # Another team's key is NotFound, worded as for an unknown id.
        info = apikeys.revoke_key(services.settings, key_id, principal=call.principal)
        call.record_ok("ui_revoke_key", info.tenant_id, info.id)
        gr.Info("Key revoked.")
        return keys_frame(services, call.principal)


@dataclass
class AdminView:
    """The Admin tab's components, for wiring."""

    refresh_btn: gr.Button
    overview: list[Any]  # what `overview` returns, in its order
    key_inputs: list[Any]  # team, scope, days
    create_btn: gr.Button
    secret: gr.Textbox
    keys: gr.Dataframe
    revoke_id: gr.Textbox
    revoke_btn: gr.Button


def build_admin_tab(services: Services) -> tuple[Callable[..., Any], list[Any]]:
    """Lay out the Admin tab and wire it; returns (fill function, its outputs)."""
    engine = gr.Markdown(elem_id="admin-engine")
    refresh_btn = gr.Button("Refresh", size="sm")
    tenants = gr.Dataframe(label="Teams (tenants) and their plugins", interactive=False, wrap=True)
    mapping = gr.Dataframe(label="Group mapping in effect", interactive=False)
    gr.Markdown("### API keys")
    key_inputs, create_btn = _new_key_row(services)
    secret = gr.Textbox(
        label="New key (shown once)", interactive=False, buttons=["copy"], elem_id="admin-secret"
    )
    keys = gr.Dataframe(headers=KEY_COLUMNS, label="Keys", interactive=False)
    with gr.Row():
        revoke_id = gr.Textbox(label="Key id to revoke", scale=3)
        revoke_btn = gr.Button("Revoke", variant="stop", scale=1)
    fair_share = gr.Dataframe(
        headers=FAIR_SHARE_COLUMNS,
        label="Fair share of the engine, last hour (this app process)",
        interactive=False,
        elem_id="admin-fair-share",
    )
    siem = gr.Markdown(elem_id="admin-siem")
    overview_out = [tenants, mapping, keys, engine, fair_share, siem]
    view = AdminView(
        refresh_btn, overview_out, key_inputs, create_btn, secret, keys, revoke_id, revoke_btn
    )
    return _wire(services, view)


def _new_key_row(services: Services) -> tuple[list[Any], gr.Button]:
    with gr.Row():
        team = gr.Dropdown(
            [(t.display_name, t.id) for t in services.tenants.all()], label="Team", scale=2
        )
        scope = gr.Dropdown(
            [("chat (member)", "member"), ("chat + documents (editor)", "editor")],
            value="member",
            label="Scope",
            scale=1,
        )
        days = gr.Number(value=90, label="Valid for (days)", precision=0, scale=1)
        create_btn = gr.Button("Create key", variant="primary", scale=1)
    return [team, scope, days], create_btn


def _wire(services: Services, v: AdminView) -> tuple[Callable[..., Any], list[Any]]:
    async def fill(request: gr.Request) -> tuple[Any, ...]:
        return await overview(services, request)

    def create(t: str | None, s: str, d: float | None, request: gr.Request) -> tuple[Any, ...]:
        return create_key(services, t, s, d, request)

    def revoke(key_id: str | None, request: gr.Request) -> pd.DataFrame:
        return revoke_key(services, key_id, request)

    private: dict[str, Any] = {"api_visibility": "private"}
    v.refresh_btn.click(fill, None, v.overview, api_name="admin_overview", **private)
    v.create_btn.click(
        create, v.key_inputs, [v.secret, v.keys], api_name="admin_create_key", **private
    )
    v.revoke_btn.click(revoke, [v.revoke_id], [v.keys], api_name="admin_revoke_key", **private)
    return fill, v.overview
