"""The identity provider outside the browser flow: discovery, JWKS, access-token checks.

`IdentityProvider` talks to the configured issuer: its discovery document (fetched once; its
issuer must be ours), its signing keys (JWKS, cached; an unknown `kid` refetches them once,
at most every `JWKS_REFETCH_MIN_SECONDS`, so made-up kids cannot flood the IdP), local
verification of access-token JWTs (`iss`, `aud` = `Settings.oidc_audience`, `exp`, `sub`),
userinfo and refresh-token grants. `IdpRefused` means the IdP said no, `IdpUnavailable` that
it could not be asked. What a credential means for us is core/auth/bearer.py's business.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import httpx
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from core.config import Settings
from core.errors import NotAuthenticated

log = logging.getLogger(__name__)
HTTP_TIMEOUT = 10.0
JWKS_REFETCH_MIN_SECONDS = 10.0  # an unknown kid refetches the JWKS at most this often


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

    @classmethod
    def from_settings(cls, settings: Settings) -> IdentityProvider:
        """The provider `settings` name (`oidc_issuer`, client id and secret, audience)."""
        return cls(
            settings.oidc_issuer,
            settings.oidc_client_id,
            settings.oidc_client_secret,
            settings.oidc_audience,
        )

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
