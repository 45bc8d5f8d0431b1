"""Who is calling: the `Principal` every entry point works with, and the role names.

A principal is built by core/auth/principal.py (browser session, OIDC access token, API key) or by
core/rbac.py (`operator_principal`, the CLI). It is never built from a value the client sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

Role = Literal["member", "editor", "team_admin"]  # per tenant; each includes the one before
GlobalRole = Literal["auditor", "admin"]
PrincipalKind = Literal["user", "api_key", "local"]

TENANT_ROLES: tuple[str, ...] = get_args(Role)
GLOBAL_ROLES: tuple[str, ...] = get_args(GlobalRole)
# Higher rank wins when several groups grant roles on the same tenant.
ROLE_RANK: dict[str, int] = {"member": 1, "editor": 2, "team_admin": 3}


@dataclass(frozen=True)
class Principal:
    """An authenticated caller and what it may use.

    `subject` is the IdP `sub` for people, `key:<id>` for API keys and `local:<os user>` for
    the CLI. `tenant_roles` maps tenant id -> role; `global_roles` holds `auditor`/`admin`.
    """

    subject: str
    email: str | None
    kind: PrincipalKind
    tenant_roles: Mapping[str, Role] = field(default_factory=dict)
    global_roles: frozenset[str] = frozenset()
    name: str | None = None

    def tenants(self) -> list[str]:
        """Tenants this principal may chat with (sorted).

        Sessions of admins carry a role on every registered tenant (core/auth/principal.py), so this
        list is complete for them too.
        """
        return sorted(self.tenant_roles)

    def role_in(self, tenant_id: str) -> Role | None:
        """The principal's role in `tenant_id`, or None."""
        return self.tenant_roles.get(tenant_id)

    @property
    def is_admin(self) -> bool:
        """Whether this principal holds the global `admin` role."""
        return "admin" in self.global_roles

    @property
    def display(self) -> str:
        """A short human label: email, else name, else subject."""
        return self.email or self.name or self.subject


def merge_role(current: Role | None, new: Role) -> Role:
    """The stronger of two tenant roles."""
    if current is None or ROLE_RANK[new] > ROLE_RANK[current]:
        return new
    return current
