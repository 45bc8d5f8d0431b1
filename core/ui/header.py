"""The page header: logo, who is signed in, their teams and roles, and the sign-out button.

Sign-out is a POST form carrying the session's CSRF token (core/auth/routes.py): a plain
`<a href="/logout">` would let any site sign people out with a link or an image.
"""

from __future__ import annotations

import html
from functools import lru_cache

from core.identity import Principal
from core.resources import assets_dir
from core.services import Services

ASSETS = assets_dir()


@lru_cache(maxsize=1)
def logo_svg() -> str:
    """The logo, inlined (no extra request, and it shows even before the session is read)."""
    path = ASSETS / "logo.svg"
    return path.read_text(encoding="utf-8") if path.exists() else ""


def brand_html() -> str:
    """Logo and product name, shown before the user is known."""
    return (
        f'<div class="tl-brand"><span class="tl-logo">{logo_svg()}</span>'
        '<span class="tl-name">tenantllm</span>'
        '<span class="tl-tagline">your team\'s assistant</span></div>'
    )


def signout_form(logout_token: str) -> str:
    """The sign-out control: a POST to /logout with this session's CSRF token."""
    return (
        '<form class="tl-signout-form" method="post" action="/logout">'
        f'<input type="hidden" name="csrf_token" value="{html.escape(logout_token)}">'
        '<button type="submit" class="tl-signout" id="tl-signout">Sign out</button>'
        "</form>"
    )


def identity_html(services: Services, principal: Principal, logout_token: str = "") -> str:
    """Signed-in user, teams with roles, global roles, and the sign-out form (all escaped).

    `logout_token` is `core.auth.principal.logout_token_of(request)` of the page's request.
    """
    name = html.escape(principal.email or principal.subject)
    names = {t.id: t.display_name for t in services.tenants.all()}
    teams = "".join(
        f'<span class="tl-chip">{html.escape(names.get(tid, tid))}'
        f"<em>{html.escape(role)}</em></span>"
        for tid, role in sorted(principal.tenant_roles.items())
    )
    global_roles = "".join(
        f'<span class="tl-chip tl-chip-global">{html.escape(r)}</span>'
        for r in sorted(principal.global_roles)
    )
    chips = teams + global_roles or '<span class="tl-chip tl-chip-none">no team yet</span>'
    return (
        '<div class="tl-identity">'
        f'<span class="tl-user" id="tl-user">{name}</span>'
        f'<span class="tl-chips">{chips}</span>'
        f"{signout_form(logout_token)}"
        "</div>"
    )
