"""Rate-limit counters: no HTTP here.

- `Limits.check(principal, tenant_id)` counts one chat request (Gradio, the API, the CLI all
  go through the chat turn) against the per-user and per-tenant limits from Settings and
  raises `RateLimited(retry_after)`; the caller audits it (core/chat/turn.py does).
  Limits on HTTP routes (slowapi, e.g. sign-in) are the web app's: core/server.py.
- Storage: in-process by default; Redis when `TENANTLLM_REDIS_URL` is set, so several app
  processes share one budget. If Redis fails, limits are still enforced per process.
- Places in the shared engine (fair share across teams, the per-team safety cap) are the
  scheduler's: core/scheduling.
"""

from __future__ import annotations

import logging
import math
import time

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import FixedWindowRateLimiter, RateLimiter

from core.config import Settings
from core.errors import ConfigError, RateLimited
from core.identity import Principal

log = logging.getLogger(__name__)


def parse_limit(value: str, name: str) -> RateLimitItem:
    """`value` ('30/minute') as a limit; ConfigError naming the setting `name` otherwise."""
    try:
        return parse(value)
    except ValueError:
        raise ConfigError(f"TENANTLLM_{name.upper()}: '{value}' is not like '30/minute'.") from None


class Limits:
    """Rate limits per user and per tenant, on Redis or in this process."""

    def __init__(
        self,
        settings: Settings,
        *,
        key_prefix: str = "tenantllm",
    ) -> None:
        """Count on Redis (`settings.redis_url`) or in memory."""
        self.settings = settings
        self.key_prefix = key_prefix
        self.user_limit = parse_limit(settings.rate_limit_user, "rate_limit_user")
        self.tenant_limit = parse_limit(settings.rate_limit_tenant, "rate_limit_tenant")
        # Fixed windows, as slowapi counts the HTTP routes' limits.
        storage = storage_from_string(settings.redis_url or "memory://")
        self._strategy: RateLimiter = FixedWindowRateLimiter(storage)
        self._fallback: RateLimiter = FixedWindowRateLimiter(MemoryStorage())

    @property
    def shared(self) -> bool:
        """Whether counters live in Redis (shared by every process)."""
        return bool(self.settings.redis_url)

    def _hit(self, item: RateLimitItem, *ids: str) -> tuple[bool, float]:
        """Count one request; (allowed, reset epoch). Falls back to memory if Redis fails."""
        strategy = self._strategy
        try:
            allowed = strategy.hit(item, self.key_prefix, *ids)
            reset = strategy.get_window_stats(item, self.key_prefix, *ids).reset_time
        except Exception as exc:  # storage down: still enforce limits, per process
            log.warning("rate-limit storage failed (%s); using in-process counters", exc)
            strategy = self._fallback
            allowed = strategy.hit(item, self.key_prefix, *ids)
            reset = strategy.get_window_stats(item, self.key_prefix, *ids).reset_time
        return allowed, reset

    def check(self, principal: Principal, tenant_id: str) -> None:
        """Count one chat request; RateLimited(retry_after) if the user or tenant is over.

        Sync (Redis I/O): call it in a thread from async code. The caller audits refusals.
        """
        checks = (
            (self.user_limit, ("user", principal.subject), "You are sending"),
            (self.tenant_limit, ("tenant", tenant_id), f"The team '{tenant_id}' is sending"),
        )
        for item, ids, who in checks:
            allowed, reset = self._hit(item, *ids)
            if not allowed:
                retry_after = max(1, math.ceil(reset - time.time()))
                raise RateLimited(
                    f"{who} too many requests (limit {item}). Try again in {retry_after} s.",
                    retry_after=retry_after,
                    limit=str(item),
                )

    def reset(self) -> None:
        """Forget every counter (tests, operators)."""
        self._strategy.storage.reset()
        self._fallback = FixedWindowRateLimiter(MemoryStorage())
