"""The IdP outside the browser flow, and `Authorization: Bearer` credentials.

`principal_from_bearer(token)` accepts:
- an API key `tlm_...` (core/apikeys.py): the principal of that key's tenant and role;
- an OIDC access token that is a JWT: signature checked against the IdP's JWKS (one refetch
  on an unknown `kid`, for key rotation), `iss`, `aud` (Settings.oidc_audience, default the
  client id) and `exp` checked; groups from the token's groups claim (else from userinfo);
- an opaque OIDC access token (oidc-provider-mock issues these): verified by asking the IdP's
  userinfo endpoint, which answers only for live tokens; a positive answer is cached for at
  most 60 s (so a revoked token stops working within a minute).
Anything else, revoked or expired raises `NotAuthenticated`; each refusal is audited.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from core.apikeys import KEY_PREFIX, principal_for_key, verify_key
from core.errors import NotAuthenticated
from core.identity import Principal

if TYPE_CHECKING:
    from core.services import Services

log = logging.getLogger(__name__)
HTTP_TIMEOUT = 10.0
JWKS_REFETCH_MIN_SECONDS = 10.0  # an unknown kid refetches the JWKS at most this often
USERINFO_CACHE_SECONDS = 60.0


class IdpRefused(Exception):
    """The IdP answered and said no (token expired, revoked, unknown)."""


class IdpUnavailable(Exception):
    """The IdP could not be reached or answered nonsense."""


def groups_from_claims(claims: dict[str, Any], claim: str) -> list[str]:
    """The groups in `claims[claim]` (a list of strings, or one string); else none."""
    value = claims.get(claim)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [g for g in value if isinstance(g, str)]
    return []


class IdentityProvider:
    """Discovery, JWKS, userinfo and refresh against the configured issuer."""

    def __init__(self, issuer: str, client_id: str, client_secret: str, audience: str) -> None:
        """Talk to `issuer` as `client_id`; bearer JWTs must name `audience`."""
        self.issuer = issuer.rstrip("/")
        self.client_id = client_id
        self.client_secret = client_secret
        self.audience = audience or client_id
        self._metadata: dict[str, Any] | None = None
        self._jwks: KeySet | None = None
        self._last_forced = float("-inf")
        self._lock = threading.Lock()
        self.jwks_fetches = 0  # observable for tests of the rotation logic

    @property
    def discovery_url(self) -> str:
        """Where the provider's metadata lives."""
        return f"{self.issuer}/.well-known/openid-configuration"

    def metadata(self) -> dict[str, Any]:
        """The discovery document (fetched once); its issuer must be ours."""
        if self._metadata is None:
            data = self._get_json(self.discovery_url)
            if str(data.get("issuer", "")).rstrip("/") != self.issuer:
                raise IdpUnavailable(f"discovery names issuer {data.get('issuer')!r}")
            self._metadata = data
        return self._metadata

    def _get_json(self, url: str, token: str | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            response = httpx.get(url, headers=headers, timeout=HTTP_TIMEOUT)
        except httpx.HTTPError as exc:
            raise IdpUnavailable(str(exc)) from exc
        return _json_or_raise(response)

    def jwks(self, force: bool = False) -> KeySet:
        """The IdP's signing keys; `force` refetches (at most every few seconds)."""
        with self._lock:
            # Forced refetches (unknown kid) are rate-limited, so a stream of tokens with
            # made-up kids cannot turn us into a flood against the IdP.
            now = time.monotonic()
            may_force = now - self._last_forced >= JWKS_REFETCH_MIN_SECONDS
            if self._jwks is None or (force and may_force):
                data = self._get_json(str(self.metadata()["jwks_uri"]))
                self._jwks = KeySet.import_key_set(data)  # type: ignore[arg-type]
                self.jwks_fetches += 1
                if force:
                    self._last_forced = now
            return self._jwks

    def verify_jwt(self, token: str) -> dict[str, Any]:
        """Claims of a signed access token (NotAuthenticated if anything is wrong)."""
        algorithms = [
            a
            for a in self.metadata().get("id_token_signing_alg_values_supported", ["RS256"])
            if a != "none"
        ]
        try:
            try:
                decoded = jwt.decode(token, self.jwks(), algorithms=algorithms)
            except InvalidKeyIdError:  # the IdP may have rotated its keys: refetch once
                decoded = jwt.decode(token, self.jwks(force=True), algorithms=algorithms)
            jwt.JWTClaimsRegistry(
                leeway=30,
                iss={"essential": True, "value": self.issuer},
                aud={"essential": True, "value": self.audience},
                exp={"essential": True},
                sub={"essential": True},
            ).validate(decoded.claims)
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise NotAuthenticated(f"The access token is not valid ({exc}).") from None
        return dict(decoded.claims)

    def userinfo(self, access_token: str) -> dict[str, Any]:
        """The userinfo claims for a live access token (IdpRefused if the IdP says no)."""
        return self._get_json(str(self.metadata()["userinfo_endpoint"]), token=access_token)

    async def auserinfo(self, access_token: str) -> dict[str, Any]:
        """`userinfo`, without blocking the event loop."""
        url = str((await self._ametadata())["userinfo_endpoint"])
        headers = {"Authorization": f"Bearer {access_token}"}
        try:
            async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
                response = await client.get(url, headers=headers)
        except httpx.HTTPError as exc:
            raise IdpUnavailable(str(exc)) from exc
        return _json_or_raise(response)

    async def arefresh(self, refresh_token: str) -> dict[str, Any]:
        """New tokens from a refresh token (IdpRefused if it is expired or revoked)."""
        url = str((await self._ametadata())["token_endpoint"])
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        try:
            async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
                response = await client.post(
                    url, data=form, auth=(self.client_id, self.client_secret)
                )
        except httpx.HTTPError as exc:
            raise IdpUnavailable(str(exc)) from exc
        tokens = _json_or_raise(response)
        if "access_token" not in tokens:
            raise IdpRefused("no access token in the refresh answer")
        return tokens

    async def _ametadata(self) -> dict[str, Any]:
        if self._metadata is None:
            return await asyncio.to_thread(self.metadata)
        return self._metadata


def _json_or_raise(response: httpx.Response) -> dict[str, Any]:
    if response.status_code in (400, 401, 403):
        raise IdpRefused(f"HTTP {response.status_code}")
    if response.status_code != 200:
        raise IdpUnavailable(f"HTTP {response.status_code}")
    try:
        data = response.json()
    except ValueError as exc:
        raise IdpUnavailable("not JSON") from exc
    if not isinstance(data, dict):
        raise IdpUnavailable("not a JSON object")
    return data


@dataclass
class AuthRuntime:
    """What sign-in needs at run time: the services and the IdP client."""

    services: Services
    idp: IdentityProvider
    _userinfo_cache: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)

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
        if hit is not None and time.monotonic() - hit[0] < ttl:
            return hit[1]
        try:
            claims = self.idp.userinfo(token)
        except IdpRefused:
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
        if token.count(".") == 2:
            claims = self.idp.verify_jwt(token)
            if settings.oidc_groups_claim not in claims:
                # No groups claim: ask userinfo; if that fails the token grants nothing.
                with contextlib.suppress(IdpRefused, IdpUnavailable):
                    claims = {**self.idp.userinfo(token), **claims}
        else:
            claims = self.cached_userinfo(token)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise NotAuthenticated("The access token names no subject.")
        groups = groups_from_claims(claims, settings.oidc_groups_claim)
        return self.user_principal(subject, claims.get("email"), claims.get("name"), groups)


_active: AuthRuntime | None = None


def activate(runtime: AuthRuntime) -> None:
    """Make `runtime` the one `principal_from_bearer` uses (install_auth calls this)."""
    global _active
    _active = runtime


def active_runtime() -> AuthRuntime | None:
    """The runtime installed by `install_auth`, if any."""
    return _active


def principal_from_bearer(token: str) -> Principal:
    """The principal of `Authorization: Bearer <token>`; NotAuthenticated (audited) if none.

    Sync (database and IdP I/O): call it in a thread from async code.
    """
    from core.audit import AuditEvent

    runtime = _active
    if runtime is None:
        raise NotAuthenticated("Sign-in is not configured in this process.")
    try:
        return runtime.bearer_principal(token.strip())
    except NotAuthenticated as exc:
        runtime.services.auditor.record(
            AuditEvent(
                action="bearer_auth",
                outcome="denied",
                status=401,
                error_class=type(exc).__name__,
                detail=exc.message[:500],
            )
        )
        raise
