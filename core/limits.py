"""Rate limits and per-tenant concurrency caps.

- HTTP routes: the slowapi `Limiter` (`Limits.limiter`; decorate routes with
  `limits.limiter.limit("5/minute")`). Its key is the authenticated principal, never a
  client-supplied header such as X-Forwarded-For; unauthenticated routes (sign-in) fall back to
  the socket peer address. A refusal answers 429 with `Retry-After` and `x-ratelimit-*`
  headers and is audited (`install_rate_limits`).
- Inside handlers (Gradio, the chat turn): `Limits.check(principal, tenant_id)` hits the same
  `limits` storage with the per-user and per-tenant limits from Settings and raises
  `RateLimited(retry_after)`; the caller audits it (core/chat/turn.py does).
- Storage: in-process by default; Redis when `TENANTLLM_REDIS_URL` is set, so several app
  processes share one budget. If Redis fails, limits are still enforced per process.
- `generation_slot(tenant_id)`: at most `tenant_max_concurrency` generations of one tenant run
  at once in this process (the engine is per process, so the cap is too). A request waits up
  to `slot_wait_seconds` for a slot, then gets `RateLimited`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter, RateLimiter
from slowapi import Limiter, _rate_limit_exceeded_handler
from slowapi.errors import RateLimitExceeded
from slowapi.util import get_remote_address

from core.config import Settings
from core.errors import ConfigError, RateLimited
from core.identity import Principal

if TYPE_CHECKING:
    from core.services import Services

log = logging.getLogger(__name__)
DEFAULT_SLOT_WAIT_SECONDS = 10.0


def principal_key(request: Request) -> str:
    """slowapi key: the authenticated principal; the peer address only when there is none."""
    principal = getattr(request.state, "principal", None)
    if principal is None:
        from core.auth.principal import principal_from_request

        principal = principal_from_request(request)
    if isinstance(principal, Principal):
        return f"principal:{principal.subject}"
    return f"ip:{get_remote_address(request)}"  # the socket peer, not X-Forwarded-For


def _parse(value: str, name: str) -> RateLimitItem:
    try:
        return parse(value)
    except ValueError:
        raise ConfigError(f"TENANTLLM_{name.upper()}: '{value}' is not like '30/minute'.") from None


class Limits:
    """Rate limits (per user, per tenant) and per-tenant generation slots of one process."""

    def __init__(
        self,
        settings: Settings,
        *,
        key_prefix: str = "tenantllm",
        slot_wait_seconds: float = DEFAULT_SLOT_WAIT_SECONDS,
    ) -> None:
        """Build the limiter on Redis (`settings.redis_url`) or in memory."""
        self.settings = settings
        self.key_prefix = key_prefix
        self.user_limit = _parse(settings.rate_limit_user, "rate_limit_user")
        self.tenant_limit = _parse(settings.rate_limit_tenant, "rate_limit_tenant")
        self.limiter = Limiter(
            key_func=principal_key,
            headers_enabled=True,
            storage_uri=settings.redis_url or "memory://",
            key_prefix=key_prefix,
        )
        self._fallback: RateLimiter = FixedWindowRateLimiter(MemoryStorage())
        self.slot_wait_seconds = slot_wait_seconds
        self._slots: dict[str, asyncio.Semaphore] = {}

    @property
    def shared(self) -> bool:
        """Whether counters live in Redis (shared by every process)."""
        return bool(self.settings.redis_url)

    def _hit(self, item: RateLimitItem, *ids: str) -> tuple[bool, float]:
        """Count one request; (allowed, reset epoch). Falls back to memory if Redis fails."""
        strategy: RateLimiter = self.limiter.limiter
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
        self.limiter.reset()
        self._fallback = FixedWindowRateLimiter(MemoryStorage())

    def generation_slot(self, tenant_id: str) -> AbstractAsyncContextManager[None]:
        """Hold one of the tenant's generation slots while generating (see module doc)."""
        return self._slot(tenant_id)

    @asynccontextmanager
    async def _slot(self, tenant_id: str) -> AsyncIterator[None]:
        slot = self._slots.setdefault(
            tenant_id, asyncio.Semaphore(self.settings.tenant_max_concurrency)
        )
        try:
            await asyncio.wait_for(slot.acquire(), timeout=self.slot_wait_seconds)
        except TimeoutError:
            raise RateLimited(
                f"The team '{tenant_id}' is already running "
                f"{self.settings.tenant_max_concurrency} answers at once; try again shortly.",
                retry_after=max(1, math.ceil(self.slot_wait_seconds)),
                limit=f"{self.settings.tenant_max_concurrency} concurrent",
            ) from None
        try:
            yield
        finally:
            slot.release()

    def busy(self, tenant_id: str) -> int:
        """Generations of `tenant_id` running now in this process."""
        slot = self._slots.get(tenant_id)
        if slot is None:
            return 0
        return self.settings.tenant_max_concurrency - slot._value


def install_rate_limits(app: FastAPI, services: Services) -> None:
    """Attach the limiter to `app`; 429 answers carry Retry-After and are audited."""
    from core.api.errors import error_response
    from core.audit.auditor import AuditEvent

    app.state.limiter = services.limits.limiter

    async def slowapi_refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RateLimitExceeded)
        response = _rate_limit_exceeded_handler(request, exc)
        services.auditor.record(_refusal_event(AuditEvent, request, str(exc.detail)))
        return response

    async def handler_refused(request: Request, exc: Exception) -> Response:
        # Raised by Limits.check / generation_slot in a plain route: the raiser audits it.
        assert isinstance(exc, RateLimited)
        return error_response(exc)  # the one OpenAI error body, with Retry-After

    app.add_exception_handler(RateLimitExceeded, slowapi_refused)
    app.add_exception_handler(RateLimited, handler_refused)


def _refusal_event(event_cls: Any, request: Request, detail: str) -> Any:
    principal = getattr(request.state, "principal", None)
    if principal is None:
        from core.auth.principal import principal_from_request

        principal = principal_from_request(request)
    return event_cls(
        action=f"http:{request.url.path}"[:64],
        outcome="rate_limited",
        status=429,
        user_sub=principal.subject if principal else None,
        user_email=principal.email if principal else None,
        client_ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
        error_class="RateLimitExceeded",
        detail=detail[:500],
    )
