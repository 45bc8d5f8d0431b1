"""The IdP outside the browser flow, and `Authorization: Bearer` credentials.

`principal_from_bearer(token)` accepts:
- an API key `tlm_...` (core/auth/apikeys.py): the principal of that key's tenant and role;
- an OIDC access token. A JWT that looks like an ID token is refused first, whatever its
  audience (core/auth/token_kinds.py: ID tokens are meant for the client, leak through browsers
  and cannot be revoked). With `Settings.oidc_audience` set, a JWT is verified here:
  signature against the IdP's JWKS (one refetch on an unknown `kid`, for key rotation),
  `iss`, `aud` (that audience; there is no default, because the client id is the audience of
  ID tokens) and `exp`; groups from its groups claim (else from userinfo).
- Without an audience, and for opaque tokens (oidc-provider-mock issues these): the IdP's
  userinfo endpoint decides, which answers only for live access tokens; a positive answer is
  cached for at most 60 s (so a revoked token stops working within a minute), a refusal for
  the same time (a repeated bad token costs the IdP one call).
Anything else, revoked or expired raises `NotAuthenticated`; each refusal is audited through
core/audit/refusals.py (client address and user agent; a flood becomes a few rows a minute).
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

from core.audit.refusals import Refusal, RefusalLog
from core.auth.apikeys import KEY_PREFIX, principal_for_key, verify_key
from core.auth.token_kinds import id_token_reason, unverified_parts
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
        """Talk to `issuer` as `client_id`; bearer JWTs must name `audience` (if set)."""
        self.issuer = issuer.rstrip("/")
        self.client_id = client_id
        self.client_secret = client_secret
        self.audience = audience  # never defaults to client_id: that is the ID tokens' aud
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
        if not self.audience:
            raise NotAuthenticated("JWT access tokens are not checked locally here.")
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


_active: AuthRuntime | None = None


def activate(runtime: AuthRuntime) -> None:
    """Make `runtime` the one `principal_from_bearer` uses (install_auth calls this)."""
    global _active
    _active = runtime


def active_runtime() -> AuthRuntime | None:
    """The runtime installed by `install_auth`, if any."""
    return _active


def principal_from_bearer(
    token: str, client_ip: str | None = None, user_agent: str | None = None
) -> Principal:
    """The principal of `Authorization: Bearer <token>`; NotAuthenticated (audited) if none.

    `client_ip` and `user_agent` describe the caller in the audit row of a refusal.
    Sync (database and IdP I/O): call it in a thread from async code.
    """
    runtime = _active
    if runtime is None:
        raise NotAuthenticated("Sign-in is not configured in this process.")
    try:
        return runtime.bearer_principal(token.strip())
    except NotAuthenticated as exc:
        record_refusal(exc, client_ip, user_agent)
        raise


def record_refusal(
    exc: NotAuthenticated, client_ip: str | None, user_agent: str | None, action: str = ""
) -> None:
    """Audit a refused (or missing) credential through the flood-proof refusal log."""
    runtime = _active
    if runtime is None:
        return
    runtime.refusals.refused(
        Refusal(
            reason=exc.message,
            error_class=type(exc).__name__,
            client_ip=client_ip,
            user_agent=user_agent,
            action=action or "bearer_auth",
        )
    )
