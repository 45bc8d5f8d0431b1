"""Rate limits (per principal, per user, per tenant; shared through Redis) and the per-tenant
concurrency cap."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from core.config import Settings
from core.errors import RateLimited
from core.identity import Principal
from core.limits import Limits
from tests.fixtures.common import REPO
from tests.fixtures.oidc import app_client, build_auth_app, login, make_auth_settings

REDIS_URL = "redis://127.0.0.1:6379/0"


def person(name: str) -> Principal:
    return Principal(name, None, "user", {"sales": "member"}, frozenset())


async def test_route_limit_is_per_principal_with_retry_after(
    tmp_path: Path, oidc_issuer: str
) -> None:
    app, services = build_auth_app(make_auth_settings(tmp_path, oidc_issuer))
    async with app_client(app) as alice, app_client(app) as erin:
        await login(alice, "alice")
        await login(erin, "erin")
        assert [(await alice.get("/limited")).status_code for _ in range(2)] == [200, 200]
        refused = await alice.get("/limited")
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["x-ratelimit-limit"] == "2"
        assert refused.headers["x-ratelimit-remaining"] == "0"
        # A client-supplied X-Forwarded-For does not buy a fresh budget ...
        spoofed = await alice.get("/limited", headers={"X-Forwarded-For": "10.9.8.7"})
        assert spoofed.status_code == 429
        # ... while another person from the same address still has theirs.
        assert (await erin.get("/limited")).status_code == 200
    refusals = [e for e in services.auditor.events if e.outcome == "rate_limited"]
    assert [e.user_sub for e in refusals] == ["alice", "alice"]
    assert all(e.status == 429 for e in refusals)


async def test_handler_limit_answers_429_with_retry_after(tmp_path: Path, oidc_issuer: str) -> None:
    settings = make_auth_settings(tmp_path, oidc_issuer, rate_limit_user="2/minute")
    app, _ = build_auth_app(settings)
    async with app_client(app) as client:
        await login(client, "alice")
        assert [(await client.get("/chat-check/sales")).status_code for _ in range(2)] == [200] * 2
        refused = await client.get("/chat-check/sales")
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert "too many requests" in refused.json()["error"]["message"]


def test_per_user_and_per_tenant_limits(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, rate_limit_user="3/minute", rate_limit_tenant="5/minute")
    limits = Limits(settings, key_prefix=f"t-{uuid.uuid4().hex}")
    for _ in range(3):
        limits.check(person("ann"), "sales")
    with pytest.raises(RateLimited) as over_user:
        limits.check(person("ann"), "sales")
    assert over_user.value.retry_after >= 1 and "You are sending" in over_user.value.message
    # A refused request does not count against the tenant: 3 used, bob brings it to 5.
    limits.check(person("bob"), "sales")
    limits.check(person("bob"), "sales")
    with pytest.raises(RateLimited, match="team 'sales'"):
        limits.check(person("bob"), "sales")
    limits.check(person("cat"), "finance")  # another tenant is not affected


def test_unreachable_redis_still_enforces_limits(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0", rate_limit_user="2/minute"
    )
    limits = Limits(settings, key_prefix=f"t-{uuid.uuid4().hex}")
    limits.check(person("ann"), "sales")
    limits.check(person("ann"), "sales")
    with pytest.raises(RateLimited):
        limits.check(person("ann"), "sales")


_OTHER_PROCESS = """
import json, sys
from core.config import Settings
from core.errors import RateLimited
from core.identity import Principal
from core.limits import Limits
settings = Settings(data_dir=sys.argv[1], redis_url=sys.argv[2], rate_limit_user="3/minute")
limits = Limits(settings, key_prefix=sys.argv[3])
outcomes = []
for _ in range(2):
    try:
        limits.check(Principal("ann", None, "user", {}, frozenset()), "sales")
        outcomes.append("ok")
    except RateLimited:
        outcomes.append("limited")
print(json.dumps(outcomes))
"""


@pytest.mark.redis
def test_two_processes_share_one_budget_through_redis(tmp_path: Path) -> None:
    prefix = f"t-{uuid.uuid4().hex}"
    settings = Settings(data_dir=tmp_path, redis_url=REDIS_URL, rate_limit_user="3/minute")
    here = Limits(settings, key_prefix=prefix)
    here.check(person("ann"), "sales")
    here.check(person("ann"), "sales")
    other = subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS, str(tmp_path), REDIS_URL, prefix],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert other.returncode == 0, other.stderr
    # 2 used here, so the other process gets exactly one more, then is refused.
    assert json.loads(other.stdout.strip().splitlines()[-1]) == ["ok", "limited"]
    with pytest.raises(RateLimited):
        here.check(person("ann"), "sales")
    # Another prefix (another deployment) has its own counters.
    Limits(settings, key_prefix=f"t-{uuid.uuid4().hex}").check(person("ann"), "sales")


async def test_sign_in_is_limited_per_address_by_its_setting(
    tmp_path: Path, oidc_issuer: str
) -> None:
    """The sign-in limit is the setting's: the third /login from one address in a minute is 429."""
    settings = make_auth_settings(tmp_path, oidc_issuer, rate_limit_signin="2/minute")
    app, services = build_auth_app(settings)
    async with app_client(app) as client:
        codes = [(await client.get("/login")).status_code for _ in range(3)]
    assert 429 not in codes[:2] and codes[2] == 429  # the first two go on to the IdP
    refusals = [e for e in services.auditor.events if e.outcome == "rate_limited"]
    assert len(refusals) == 1


async def test_sign_in_with_redis_down_is_limited_in_memory(
    tmp_path: Path, oidc_issuer: str
) -> None:
    """Redis not answering: sign-in still goes to the IdP, and its limit holds per process."""
    settings = make_auth_settings(
        tmp_path, oidc_issuer, rate_limit_signin="2/minute", redis_url="redis://127.0.0.1:1/0"
    )
    app, _ = build_auth_app(settings)
    async with app_client(app) as client:
        codes = [(await client.get("/login")).status_code for _ in range(3)]
    assert 500 not in codes and 429 not in codes[:2] and codes[2] == 429, codes


def test_a_malformed_sign_in_limit_is_a_clear_error_at_start(
    tmp_path: Path, oidc_issuer: str
) -> None:
    from core.errors import ConfigError

    settings = make_auth_settings(tmp_path, oidc_issuer, rate_limit_signin="lots")
    with pytest.raises(ConfigError, match="TENANTLLM_RATE_LIMIT_SIGNIN"):
        build_auth_app(settings)
