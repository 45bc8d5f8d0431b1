"""Authorization: the one `authorize(principal, tenant_id, action)` every entry point calls.

Rules (the README "Roles" table says the same):
- `admin` (global) may do everything, on every tenant.
- `auditor` (global) may read the audit log; nothing else unless a tenant role grants it.
- `member` of a tenant may chat with it and read its document list.
- `editor` of a tenant may also upload and delete its documents and manage its API keys.
- `team_admin` of a tenant (issue 15, item 3) may do what an editor may, and also read the
  team's usage, set its members' budgets (never the team's own: that is the admin's grant)
  and read the team's slice of the audit log: rows whose tenant is that team, never another
  team's and never the global rows without a tenant (sign-ins, CLI reads). So `read_audit`
  on a tenant is a team admin's right, and on no tenant (every row) an auditor's.
- An API key never manages keys (a leaked key must not mint new ones), and never holds a
  team-admin right (its role is member or editor: core/auth/apikeys.py).

`authorize` only decides and raises `PermissionDenied`; it does not audit. The caller audits
the refusal, because only the caller knows the request (action name, client IP, request id):
core/chat/turn.py, core/ui/session.py `check`, core/auth/principal.py (sign-in), core/cli/keys.py.
"""

from __future__ import annotations

import getpass
from typing import Literal, get_args

from core.errors import PermissionDenied
from core.identity import Principal

Action = Literal[
    "chat",
    "read_documents",
    "upload",
    "delete_document",
    "read_audit",
    "manage_keys",
    "view_admin",
    "read_usage",
    "manage_member_budgets",
    "manage_team_budget",
]
ACTIONS: tuple[str, ...] = get_args(Action)

MEMBER_ACTIONS = frozenset({"chat", "read_documents"})
EDITOR_ACTIONS = MEMBER_ACTIONS | {"upload", "delete_document", "manage_keys"}
TEAM_ADMIN_ACTIONS = EDITOR_ACTIONS | {"read_usage", "manage_member_budgets", "read_audit"}
GLOBAL_ACTIONS = frozenset({"view_admin"})
ROLE_ACTIONS: dict[str, frozenset[str]] = {
    "member": MEMBER_ACTIONS,
    "editor": EDITOR_ACTIONS,
    "team_admin": TEAM_ADMIN_ACTIONS,
}

_WORDS: dict[str, str] = {
    "chat": "chat with",
    "read_documents": "read the documents of",
    "upload": "upload documents to",
    "delete_document": "delete documents of",
    "manage_keys": "manage API keys of",
    "read_usage": "read the usage of",
    "manage_member_budgets": "set member budgets of",
    "manage_team_budget": "change the team budget of",
    "read_audit": "read the audit log of",
}


def is_allowed(principal: Principal, tenant_id: str | None, action: Action) -> bool:
    """Whether `principal` may do `action` on `tenant_id` (None: not about one tenant)."""
    if action not in ACTIONS:
        return False  # an unknown action is refused, never allowed by default
    if principal.is_admin:
        return True
    if action == "read_audit" and "auditor" in principal.global_roles:
        return True  # every team's rows and the global ones
    if action in GLOBAL_ACTIONS or tenant_id is None:
        return False
    if action == "manage_keys" and principal.kind == "api_key":
        return False
    role = principal.role_in(tenant_id)
    return role is not None and action in ROLE_ACTIONS.get(role, frozenset())


def allowed_tenants(principal: Principal, action: Action) -> list[str] | None:
    """The tenants on which `principal` may do `action`; None: every tenant and the rows of no
    tenant (an admin; an auditor for `read_audit`). Queries filter by this list in SQL."""
    if is_allowed(principal, None, action):
        return None
    return sorted(t for t in principal.tenant_roles if is_allowed(principal, t, action))


def authorize(principal: Principal, tenant_id: str | None, action: Action) -> None:
    """Raise `PermissionDenied` unless `principal` may do `action` on `tenant_id`.

    The caller audits the refusal (see the module docstring).
    """
    if is_allowed(principal, tenant_id, action):
        return
    if action == "read_audit" and tenant_id is None:
        raise PermissionDenied("Only auditors and admins may read the audit log.")
    if action == "read_usage" and tenant_id is None:
        raise PermissionDenied("Only admins and team admins may read usage.")
    if action == "view_admin":
        raise PermissionDenied("Only admins may open the administration page.")
    if tenant_id is None:
        raise PermissionDenied(f"Only admins may do '{action}' across all teams.")
    raise PermissionDenied(f"You may not {_WORDS.get(action, action)} the team '{tenant_id}'.")


def operator_principal() -> Principal:
    """The CLI's principal: the operator on the server, `local:<os user>`, with admin rights."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = "unknown"
    return Principal(
        subject=f"local:{user}",
        email=None,
        kind="local",
        tenant_roles={},
        global_roles=frozenset({"admin"}),
    )
