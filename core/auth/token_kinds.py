"""Telling an OIDC ID token from an access token, so that only access tokens open the API.

An ID token says who signed in, to the client (its `aud` is the client id); it is not meant
for resource servers, it travels through browsers (historically in logout URLs as
`id_token_hint`) and it cannot be revoked. An API that accepts it turns every leak of it into
an API credential (issue 12, item 4). Audience checks alone do not separate the two when the
API audience is the client id, so the token's own shape decides, before any signature work:

- a JOSE `typ` header other than `JWT` / `at+jwt` (e.g. `id_token+jwt`, `logout+jwt`) -> refused;
- claims only ID tokens carry (`nonce`, `at_hash`, `c_hash`, `s_hash`; Keycloak's payload
  `typ: ID`) -> refused;
- `typ: at+jwt` (RFC 9068: the IdP says "access token") -> an access token;
- otherwise it must carry an access-token claim: `scope`/`scp` (RFC 9068, Okta, Entra ID,
  Keycloak, Auth0) or `client_id`/`cid` (RFC 9068, Okta). An ID token without a nonce (a
  plain code flow) still has none of these and is refused.
Reading the unverified header and payload is safe here: the result can only refuse.
"""

from __future__ import annotations

import base64
import json
from typing import Any

ACCESS_TOKEN_TYPES = ("at+jwt", "application/at+jwt")
ID_TOKEN_CLAIMS = ("nonce", "at_hash", "c_hash", "s_hash")
ACCESS_TOKEN_CLAIMS = ("scope", "scp", "client_id", "cid")
ACCEPTED_PAYLOAD_TYPES = ("bearer", "at+jwt")  # Keycloak: "Bearer"; its ID tokens say "ID"


def _part(segment: str) -> dict[str, Any]:
    raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def unverified_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a compact JWT, NOT verified (ValueError if it is not one)."""
    segments = token.split(".")
    if len(segments) != 3:
        raise ValueError("not a compact JWS")
    try:
        return _part(segments[0]), _part(segments[1])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("not a JWT") from exc


def id_token_reason(header: dict[str, Any], claims: dict[str, Any]) -> str | None:
    """Why this JWT is not an access token (an ID token or worse); None if it may be one."""
    jose_type = str(header.get("typ", "JWT")).lower()
    if jose_type not in ("jwt", *ACCESS_TOKEN_TYPES):
        return f"its type is {header.get('typ')!r}, not an access token"
    present = [name for name in ID_TOKEN_CLAIMS if name in claims]
    if present:
        return f"it carries ID-token claims ({', '.join(present)})"
    payload_type = claims.get("typ")
    if payload_type is not None and str(payload_type).lower() not in ACCEPTED_PAYLOAD_TYPES:
        return f"its claims say typ {payload_type!r}"
    if jose_type in ACCESS_TOKEN_TYPES:
        return None
    if not any(name in claims for name in ACCESS_TOKEN_CLAIMS):
        return "it has no access-token claim (scope, scp, client_id or cid)"
    return None
