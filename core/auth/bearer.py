"""`Authorization: Bearer` credentials -> a principal, with the app's auth state.

`AuthRuntime` is what sign-in needs at run time for ONE app: its services, its identity
provider (core/auth/idp.py), its refusal log and its userinfo caches. `build_auth_runtime`
makes one; the app keeps it as `app.state.auth` (core/server.py) and hands it on. There is no
process-wide "active" runtime: two apps in one process each authenticate with their own.

`principal_from_bearer(runtime, token)` accepts:
- an API key `tlm_...` (core/auth/apikeys.py): the principal of that key's tenant and role;
- an OIDC access token. A JWT that looks like an ID token is refused first, whatever its
  audience (core/auth/token_kinds.py: ID tokens are meant for the client, leak through browsers
  and cannot be revoked). With `Settings.oidc_audience` set, a JWT is verified locally
  (`IdentityProvider.verify_jwt`; there is no default audience, because the client id is the
  audience of ID tokens); groups from its groups claim (else from userinfo).
- Without an audience, and for opaque tokens (oidc-provider-mock issues these): the IdP's
  userinfo endpoint decides, which answers only for live access tokens; a positive answer is
  cached for at most 60 s (so a revoked token stops working within a minute), a refusal for
  the same time (a repeated bad token costs the IdP one call).
Anything else, revoked or expired raises `NotAuthenticated`; each refusal is audited through
core/audit/refusals.py (client address and user agent; a flood becomes a few rows a minute).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.audit.refusals import EventSink, Refusal, RefusalLog
from core.auth.apikeys import KEY_PREFIX, principal_for_key, verify_key
from core.auth.group_mapping import GroupMapping
from core.auth.idp import IdentityProvider, IdpRefused, IdpUnavailable, groups_from_claims
from core.auth.token_kinds import id_token_reason, unverified_parts
from core.config import Settings
from core.errors import NotAuthenticated
from core.identity import Principal
from core.tenancy import TenantRegistry

USERINFO_CACHE_SECONDS = 60.0


class AuthServices(Protocol):
    """The parts of `core.services.Services` sign-in uses.

    A protocol, not the class: core.services builds on this package (the group mapping), so
    this package names only what it needs.
    """

    # Read-only properties: any object with these attributes fits (Services, a test's fake).
    @property
    def settings(self) -> Settings: ...
    @property
    def tenants(self) -> TenantRegistry: ...
    @property
    def groups(self) -> GroupMapping: ...
    @property
    def auditor(self) -> EventSink: ...


@dataclass
class AuthRuntime:
    """What sign-in needs at run time for one app: services, IdP, refusal log, caches."""

    services: AuthServices
    idp: IdentityProvider
    refusals: RefusalLog
    _userinfo_cache: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    _refused_cache: dict[str, float] = field(default_factory=dict)

    def user_principal(
        self, subject: str, email: str | None, name: str | None, groups: list[str]
    ) -> Principal:
        """A person's principal: roles from the group mapping in force now.

        Admins get the editor role on every registered tenant, so `tenants()` lists all.
        """
        tenant_roles, global_roles = self.services.groups.resolve(groups)
        if "admin" in global_roles:
            for tenant in self.services.tenants.all():
                tenant_roles[tenant.id] = "editor"
        return Principal(
            subject=subject,
            email=email,
            kind="user",
            tenant_roles=tenant_roles,
            global_roles=global_roles,
            name=name,
        )

    def cached_userinfo(self, token: str) -> dict[str, Any]:
        """Userinfo for an opaque token, remembered for a short while."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        hit = self._userinfo_cache.get(digest)
        ttl = min(USERINFO_CACHE_SECONDS, self.services.settings.groups_refresh_seconds)
        now = time.monotonic()
        if hit is not None and now - hit[0] < ttl:
            return hit[1]
        if now - self._refused_cache.get(digest, float("-inf")) < USERINFO_CACHE_SECONDS:
            raise NotAuthenticated("The access token is expired, revoked or unknown.")
        try:
            claims = self.idp.userinfo(token)
        except IdpRefused:
            if len(self._refused_cache) > 10_000:
                self._refused_cache.clear()
            self._refused_cache[digest] = now
            raise NotAuthenticated("The access token is expired, revoked or unknown.") from None
        except IdpUnavailable:
            raise NotAuthenticated("The identity provider cannot check this token now.") from None
        if len(self._userinfo_cache) > 10_000:
            self._userinfo_cache.clear()
        self._userinfo_cache[digest] = (time.monotonic(), claims)
        return claims

    def bearer_principal(self, token: str) -> Principal:
        """The principal of a bearer credential (see the module docstring)."""
        settings = self.services.settings
        if token.startswith(KEY_PREFIX):
            return principal_for_key(verify_key(settings, token))
        is_jwt = token.count(".") == 2
        if is_jwt:
            refuse_id_tokens(token)
        if is_jwt and self.idp.audience:
            claims = self._verified_jwt_claims(token)
        else:
            claims = self.cached_userinfo(token)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise NotAuthenticated("The access token names no subject.")
        groups = groups_from_claims(claims, settings.oidc_groups_claim)
        return self.user_principal(subject, claims.get("email"), claims.get("name"), groups)

    def _verified_jwt_claims(self, token: str) -> dict[str, Any]:
        claims = self.idp.verify_jwt(token)
        if self.services.settings.oidc_groups_claim not in claims:
            # No groups claim: ask userinfo; if that fails the token grants nothing.
            with contextlib.suppress(IdpRefused, IdpUnavailable):
                claims = {**self.idp.userinfo(token), **claims}
        return claims


def refuse_id_tokens(token: str) -> None:
    """NotAuthenticated if this JWT is (or looks like) an ID token, or is no JWT at all."""
    try:
        header, claims = unverified_parts(token)
    except ValueError:
        raise NotAuthenticated("The access token is not valid (not a JWT).") from None
    reason = id_token_reason(header, claims)
    if reason is not None:
        raise NotAuthenticated(
            f"This is not an access token ({reason}). Send an access token or an API key; "
            "ID tokens are never accepted by the API."
        )


def build_auth_runtime(services: AuthServices, idp: IdentityProvider | None = None) -> AuthRuntime:
    """The auth state of one app: `idp` (default: the one `services.settings` name)."""
    settings = services.settings
    return AuthRuntime(
        services=services,
        idp=idp or IdentityProvider.from_settings(settings),
        refusals=RefusalLog(services.auditor, settings.refusal_audit_window_seconds),
    )


def principal_from_bearer(
    runtime: AuthRuntime,
    token: str,
    client_ip: str | None = None,
    user_agent: str | None = None,
) -> Principal:
    """The principal of `Authorization: Bearer <token>`; NotAuthenticated (audited) if none.

    `client_ip` and `user_agent` describe the caller in the audit row of a refusal.
    Sync (database and IdP I/O): call it in a thread from async code.
    """
    try:
        return runtime.bearer_principal(token.strip())
    except NotAuthenticated as exc:
        record_refusal(runtime, exc, client_ip, user_agent)
        raise


def record_refusal(
    runtime: AuthRuntime,
    exc: NotAuthenticated,
    client_ip: str | None,
    user_agent: str | None,
    action: str = "",
) -> None:
    """Audit a refused (or missing) credential through the flood-proof refusal log."""
    runtime.refusals.refused(
        Refusal(
            reason=exc.message,
            error_class=type(exc).__name__,
            client_ip=client_ip,
            user_agent=user_agent,
            action=action or "bearer_auth",
        )
    )
