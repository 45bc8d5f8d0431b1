"""Authorization: the one `authorize(principal, tenant_id, action)` every entry point calls.

Rules (the README "Roles" table says the same):
- `admin` (global) may do everything, on every tenant.
- `auditor` (global) may read the audit log; nothing else unless a tenant role grants it.
- `member` of a tenant may chat with it and read its document list.
- `editor` of a tenant may also upload and delete its documents and manage its API keys.
- An API key never manages keys (a leaked key must not mint new ones).

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
]
ACTIONS: tuple[str, ...] = get_args(Action)

MEMBER_ACTIONS = frozenset({"chat", "read_documents"})
EDITOR_ACTIONS = MEMBER_ACTIONS | {"upload", "delete_document", "manage_keys"}
GLOBAL_ACTIONS = frozenset({"read_audit", "view_admin"})

_WORDS: dict[str, str] = {
    "chat": "chat with",
    "read_documents": "read the documents of",
    "upload": "upload documents to",
    "delete_document": "delete documents of",
    "manage_keys": "manage API keys of",
}


def is_allowed(principal: Principal, tenant_id: str | None, action: Action) -> bool:
    """Whether `principal` may do `action` on `tenant_id` (None: not about one tenant)."""
    if action not in ACTIONS:
        return False  # an unknown action is refused, never allowed by default
    if principal.is_admin:
        return True
    if action == "read_audit":
        return "auditor" in principal.global_roles
    if action in GLOBAL_ACTIONS or tenant_id is None:
        return False
    if action == "manage_keys" and principal.kind == "api_key":
        return False
    role = principal.role_in(tenant_id)
    if role == "editor":
        return action in EDITOR_ACTIONS
    if role == "member":
        return action in MEMBER_ACTIONS
    return False


def authorize(principal: Principal, tenant_id: str | None, action: Action) -> None:
    """Raise `PermissionDenied` unless `principal` may do `action` on `tenant_id`.

    The caller audits the refusal (see the module docstring).
    """
    if is_allowed(principal, tenant_id, action):
        return
    if action == "read_audit":
        raise PermissionDenied("Only auditors and admins may read the audit log.")
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
