"""`FairScheduler`: every chat turn of every channel waits here for its place in the engine.

The order is `FairQueue`'s (token-fair across teams, work-conserving); this module adds time:
a turn that has waited `fair_queue_wait_seconds` is refused with `RateLimited` (Retry-After),
which the chat turn audits. A turn cancelled while waiting leaves the queue; one cancelled
while generating gives its place back. Sizes come from Settings:
- `engine_concurrency`: turns in the engine at once across all teams (where the engine's
  throughput stops growing: see `make bench`'s scaling curve);
- `max_num_seqs`: the ceiling, counting teams admitted within their guaranteed share;
- `tenant_max_concurrency`: a safety limit per team.
With `TENANTLLM_REDIS_URL` the team cap and the fair-share counters are shared by every app
replica (core/scheduling/shared_places.py); without it, or while Redis is down, per process.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from core.config import Settings
from core.errors import RateLimited
from core.scheduling.fair_queue import FairQueue, Ticket
from core.scheduling.redis_state import RedisSchedulingState
from core.scheduling.service_log import ServiceLog
from core.scheduling.shared_places import SharedPlaces
from core.scheduling.weights import WeightBook

log = logging.getLogger(__name__)


class Place:
    """A turn's place in the engine: report generated tokens to it as they come."""

    def __init__(self, scheduler: FairScheduler, ticket: Ticket, waited: float) -> None:
        self._scheduler = scheduler
        self._ticket = ticket
        self.waited = waited  # seconds spent in the queue
        # Added to the engine request's priority (lower runs sooner): 0 for the team served
        # least among the active ones. vLLM orders its own waiting requests by it.
        self.rank = ticket.rank

    def generated(self, completion_tokens: int) -> None:
        """Charge the team for the output so far (`completion_tokens`: a running total)."""
        self._scheduler.queue.charge_output(self._ticket, completion_tokens)


class FairScheduler:
    """Admission of chat turns to the shared engine, in token-fair order across teams."""

    def __init__(
        self,
        settings: Settings,
        weights: WeightBook,
        clock: Callable[[], float] = time.monotonic,
        *,
        shared: RedisSchedulingState | None = None,
    ) -> None:
        """Sizes and the wait bound from `settings`; weights from `weights`.

        `shared`: the replicas' state (default: on `settings.redis_url` when it is set).
        """
        capacity = settings.engine_concurrency
        self.queue = FairQueue(
            capacity=capacity,
            ceiling=max(capacity, settings.max_num_seqs),
            team_cap=settings.tenant_max_concurrency,
            weight=weights.weight,
        )
        self.weights = weights
        self.wait_bound = settings.fair_queue_wait_seconds
        self.log = ServiceLog(clock)
        self._clock = clock
        self._waiters: dict[Ticket, asyncio.Future[None]] = {}
        self._refreshing: asyncio.Future[None] | None = None
        if shared is None and settings.redis_url:
            shared = RedisSchedulingState(settings.redis_url)
        self.shared = SharedPlaces(shared, self.queue, self._grant) if shared else None

    @asynccontextmanager
    async def place(self, tenant_id: str, prompt_tokens: int) -> AsyncIterator[Place]:
        """Wait for the team's turn in the engine, hold it for the block, then give it back.

        Raises RateLimited when the wait exceeds the bound (nothing is held then).
        """
        self._refresh_weights_soon()
        ticket = Ticket(tenant_id, prompt_tokens)
        started = self._clock()
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[ticket] = waiter
        self._wake(self.queue.arrive(ticket))
        try:
            done, _ = await asyncio.wait({waiter}, timeout=self.wait_bound)
        except asyncio.CancelledError:
            self._leave(ticket)
            raise
        waited = self._clock() - started
        if not done:
            self._leave(ticket)
            self.log.refused(tenant_id, waited)
            raise self._refusal(tenant_id, waited)
        place = Place(self, ticket, waited)
        try:
            yield place
        finally:
            self.log.served(tenant_id, waited, prompt_tokens + ticket.output_charged)
            self._leave(ticket)

    async def close(self) -> None:
        """Give back this replica's shared places and stop its loops (no-op without Redis)."""
        if self.shared is not None:
            await self.shared.close()

    def _leave(self, ticket: Ticket) -> None:
        self._waiters.pop(ticket, None)
        if self.shared is not None:
            self.shared.release(ticket)
        self._wake(self.queue.finish(ticket))

    def _wake(self, admitted: list[Ticket]) -> None:
        if self.shared is not None:  # into the engine once the team's shared lease is held
            self.shared.claim(admitted)
            return
        for ticket in admitted:
            self._grant(ticket)

    def _grant(self, ticket: Ticket) -> None:
        waiter = self._waiters.get(ticket)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _refusal(self, tenant_id: str, waited: float) -> RateLimited:
        retry_after = max(1, math.ceil(self.wait_bound / 4))
        return RateLimited(
            f"The shared model is busy: the team '{tenant_id}' waited {waited:.0f} s for its "
            f"turn. Try again in {retry_after} s.",
            retry_after=retry_after,
            limit=f"queue wait {self.wait_bound:g} s",
        )

    def _refresh_weights_soon(self) -> None:
        """Reload the admins' weights in a thread if they are stale (never blocks a turn)."""
        if not self.weights.stale() or self._refreshing is not None:
            return

        def done(_: asyncio.Future[None]) -> None:
            self._refreshing = None

        self._refreshing = asyncio.ensure_future(asyncio.to_thread(self.weights.refresh))
        self._refreshing.add_done_callback(done)
