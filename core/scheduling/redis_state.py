"""The fair-share state every app replica shares, in Redis: team leases and the VTC counters.

- Leases: one sorted set per team, a member per generation some replica runs, scored by the
  time (Redis's own clock, so replicas' clocks never matter) it expires. Taking a lease is one
  Lua script (drop the expired ones, count, add if under the cap): atomic, so two replicas can
  never pass a team's cap together. A replica renews its leases while it runs them; a replica
  that dies (kill -9, lost host) stops renewing and its places come back `lease_seconds` later.
- Counters: one hash, team -> weighted service (core/scheduling/fair_queue.py), changed only by
  adding deltas, and read back in the same script: every replica's charges add up.

Every call raises `SharedStateDown` when Redis cannot answer (refused, timed out, an error
reply): the caller then schedules in this process alone. The outage is logged once, and for
`retry_seconds` after a failure no call waits for Redis again (a black-holed Redis must not
hold up every turn by its timeout); the first success after it is logged too, as core/limits.py
logs its own fallback. Scripts run through redis-py's `register_script` (EVALSHA, reloaded
when the server lost it: redis-py docs, "Lua Scripting").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

T = TypeVar("T")

LEASE_SECONDS = 15.0  # a dead replica's places come back after this
RETRY_SECONDS = 2.0  # after a failure, how long calls go straight to the fallback

_NOW_MS = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000)"

# KEYS[1]: the team's leases; ARGV: lease id, cap, lease ms. Returns {taken 0/1, live leases}.
_ACQUIRE = f"""{_NOW_MS}
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
if held >= tonumber(ARGV[2]) then return {{0, held}} end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {{1, held + 1}}
"""

# KEYS[1]: the team's leases; ARGV: lease ms, then lease ids. Only leases still there are
# renewed (XX): a lease released meanwhile is not brought back.
_RENEW = f"""{_NOW_MS}
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i]) end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return 1
"""

# KEYS: the teams' leases. Returns the live lease count of each.
_HELD = f"""{_NOW_MS}
local counts = {{}}
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  counts[i] = redis.call('ZCARD', KEYS[i])
end
return counts
"""

# KEYS[1]: the counters hash; ARGV: team, delta, team, delta ... Returns the whole hash.
_EXCHANGE = """
for i = 1, #ARGV, 2 do redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[i + 1]) end
return redis.call('HGETALL', KEYS[1])
"""


class SharedStateDown(Exception):
    """Redis did not answer: schedule in this process for now."""


class RedisSchedulingState:
    """Leases and counters of the fair share, shared by every replica through one Redis."""

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "tenantllm:sched",
        lease_seconds: float = LEASE_SECONDS,
        retry_seconds: float = RETRY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """A client for `url` (not connected until the first call); keys under `key_prefix`."""
        # Short timeouts: a turn waits at most this long for Redis before the fallback.
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=0.5, socket_connect_timeout=0.5, decode_responses=True
        )
        self.key_prefix = key_prefix
        self.lease_seconds = lease_seconds
        self._lease_ms = max(1, int(lease_seconds * 1000))
        self._retry_seconds = retry_seconds
        self._clock = clock
        self._down_until: float | None = None  # set while Redis is considered down
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._renew = self._redis.register_script(_RENEW)
        self._held = self._redis.register_script(_HELD)
        self._exchange = self._redis.register_script(_EXCHANGE)

    @property
    def down(self) -> bool:
        """Whether the last call failed (the fallback is in use)."""
        return self._down_until is not None

    def _leases_key(self, team: str) -> str:
        return f"{self.key_prefix}:leases:{team}"

    async def acquire(self, team: str, lease_id: str, cap: int) -> tuple[bool, int]:
        """Take a lease of `team` if it holds fewer than `cap`: (taken, the team's leases now)."""
        taken, held = await self._call(
            lambda: self._acquire(
                keys=[self._leases_key(team)], args=[lease_id, cap, self._lease_ms]
            )
        )
        return bool(int(taken)), int(held)

    async def release(self, team: str, lease_id: str) -> None:
        """Give a lease back (a no-op if it expired)."""
        await self._call(lambda: self._redis.zrem(self._leases_key(team), lease_id))

    async def renew(self, leases: Mapping[str, Sequence[str]]) -> None:
        """Push the expiry of these leases (team -> lease ids) `lease_seconds` ahead."""
        if not leases:
            return

        async def run() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                for team, ids in leases.items():
                    await self._renew(
                        keys=[self._leases_key(team)], args=[self._lease_ms, *ids], client=pipe
                    )
                await pipe.execute()

        await self._call(run)

    async def held(self, teams: Sequence[str]) -> dict[str, int]:
        """The live lease count of each team, across every replica."""
        if not teams:
            return {}
        counts = await self._call(lambda: self._held(keys=[self._leases_key(t) for t in teams]))
        return {team: int(n) for team, n in zip(teams, counts, strict=True)}

    async def exchange(self, deltas: Mapping[str, float]) -> dict[str, float]:
        """Add `deltas` (team -> weighted tokens) to the shared counters; return all of them."""
        args: list[Any] = [x for team, delta in deltas.items() for x in (team, repr(delta))]
        flat = await self._call(
            lambda: self._exchange(keys=[f"{self.key_prefix}:counters"], args=args)
        )
        return {flat[i]: float(flat[i + 1]) for i in range(0, len(flat), 2)}

    async def clear(self) -> None:
        """Delete every key under the prefix (tests, an operator's reset)."""

        async def run() -> None:
            keys = [k async for k in self._redis.scan_iter(match=f"{self.key_prefix}:*")]
            if keys:
                await self._redis.delete(*keys)

        await self._call(run)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis call; SharedStateDown if Redis fails (or failed just before)."""
        now = self._clock()
        if self._down_until is not None and now < self._down_until:
            raise SharedStateDown("Redis failed moments ago")
        try:
            result = await call()
        except (RedisError, OSError) as exc:
            if self._down_until is None:
                log.warning(
                    "shared scheduling state unavailable (%s); the team caps and fair-share "
                    "counters are per process until Redis answers again",
                    exc,
                )
            self._down_until = now + self._retry_seconds
            raise SharedStateDown(str(exc)) from exc
        if self._down_until is not None:
            log.warning("shared scheduling state is back: team caps hold across replicas again")
            self._down_until = None
        return result
