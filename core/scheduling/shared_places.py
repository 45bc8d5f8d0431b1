"""This replica's side of the shared fair share: leases for the team cap, counters in common.

`FairScheduler` (core/scheduling/scheduler.py) hands every ticket its local `FairQueue`
admits to `claim`: the ticket goes into the engine only once it holds one of its team's
leases in Redis (core/scheduling/redis_state.py), so the team cap (`tenant_max_concurrency`)
holds across every replica. A claim the cap refuses is put back at the head of its team's
queue, the queue is told how many places other replicas hold (`hold_elsewhere`), and a poll
every `poll_seconds` lets the team in again when one comes free. Leases are renewed every
third of their life while the generation runs, and given back when it ends.

The VTC counters: every charge the local queue makes is sent to Redis as a delta (coalesced,
at most one exchange every `sync_seconds`), and the sum of every replica's charges comes back
into the local queue (`set_counter`, plus what is not sent yet), so each replica orders its
own queue by the service each team received on all of them. What stays per replica: the
queues themselves, `engine_concurrency` (each replica admits that many; size it for the
replica count), the counter lift (a team is "idle" when this replica runs nothing of it).

Redis down (`SharedStateDown`): claims are granted at once and the local queue's own cap holds
per process, charges wait to be sent, and all is shared again when Redis answers (the state
module logs both moments). A generation granted during the outage holds no lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import defaultdict
from collections.abc import Callable, Coroutine
from typing import Any

from core.scheduling.fair_queue import FairQueue, Ticket
from core.scheduling.redis_state import RedisSchedulingState, SharedStateDown

SYNC_SECONDS = 0.05  # the least time between two counter exchanges (coalesces the charges)
REFRESH_SECONDS = 0.5  # counters are read this often while this replica runs anything
POLL_SECONDS = 0.05  # how often a team held back by the shared cap looks again


class SharedPlaces:
    """Leases and shared counters for one replica's `FairQueue`."""

    def __init__(
        self,
        state: RedisSchedulingState,
        queue: FairQueue,
        grant: Callable[[Ticket], None],
        *,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        """`grant(ticket)` lets a ticket into the engine once it holds its lease."""
        self.state = state
        self.queue = queue
        self.replica = uuid.uuid4().hex[:12]
        self._grant = grant
        self._poll_seconds = poll_seconds
        self._claiming: set[Ticket] = set()
        self._leases: dict[Ticket, str | None] = {}  # granted; None: granted without Redis
        self._blocked: set[str] = set()  # teams whose cap is reached with places elsewhere
        self._pending: defaultdict[str, float] = defaultdict(float)  # charges not yet sent
        self._changed = asyncio.Event()
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        queue.on_charge = self.charged

    # --- what the scheduler calls ---------------------------------------------------------
    def claim(self, tickets: list[Ticket]) -> None:
        """Get a lease for each ticket the local queue admitted, then grant it."""
        for ticket in tickets:
            self._claiming.add(ticket)
            self._spawn(self._claim(ticket))

    def release(self, ticket: Ticket) -> None:
        """`ticket` leaves (done, refused, cancelled): its lease, or its claim, goes."""
        self._claiming.discard(ticket)
        lease = self._leases.pop(ticket, None)
        if lease is not None:
            self._spawn(self._give_back(ticket.team, lease))

    def charged(self, team: str, delta: float) -> None:
        """The local queue charged `team` (weighted tokens): send it with the next exchange."""
        self._pending[team] += delta
        self._changed.set()
        self._start("sync", self._sync_loop)

    def granted(self, team: str) -> int:
        """The team's generations this replica runs (with or without a Redis lease)."""
        return sum(1 for ticket in self._leases if ticket.team == team)

    async def close(self) -> None:
        """Stop the loops, give back every lease, close the connection (tests, shutdown)."""
        for task in self._loops.values():
            task.cancel()
        await asyncio.gather(*self._loops.values(), return_exceptions=True)
        for ticket in list(self._leases):
            self.release(ticket)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.state.close()

    # --- claims ---------------------------------------------------------------------------
    async def _claim(self, ticket: Ticket) -> None:
        lease: str | None = f"{self.replica}:{ticket.seq}"
        try:
            taken, held = await self.state.acquire(ticket.team, str(lease), self.queue.team_cap)
        except SharedStateDown:
            taken, held, lease = True, 0, None  # per process: the local queue's cap holds
        if ticket not in self._claiming:  # it left while the claim was on its way
            if taken and lease is not None:
                await self._give_back(ticket.team, lease)
            return
        self._claiming.discard(ticket)
        if taken:
            self._leases[ticket] = lease
            self._start("renew", self._renew_loop)
            self._grant(ticket)
            return
        # The cap is full across the replicas: wait at the head of the team's queue.
        self.queue.hold_elsewhere(ticket.team, held - self.granted(ticket.team))
        self._blocked.add(ticket.team)
        self.claim(self.queue.requeue(ticket))
        self._start("poll", self._poll_loop)

    async def _give_back(self, team: str, lease: str) -> None:
        with contextlib.suppress(SharedStateDown):  # then it expires by itself
            await self.state.release(team, lease)

    # --- loops ----------------------------------------------------------------------------
    async def _poll_loop(self) -> None:
        """While a team waits for places held elsewhere, look at its lease count again."""
        while self._blocked:
            await asyncio.sleep(self._poll_seconds)
            teams = sorted(self._blocked)
            try:
                held = await self.state.held(teams)
            except SharedStateDown:
                held = {team: self.granted(team) for team in teams}  # nothing known elsewhere
            for team in teams:
                elsewhere = held[team] - self.granted(team)
                if not self.queue.waiting(team):
                    self._blocked.discard(team)
                    elsewhere = 0  # the next arrival asks Redis again
                self.queue.hold_elsewhere(team, elsewhere)
            self.claim(self.queue.admit_ready())

    async def _renew_loop(self) -> None:
        """Renew this replica's leases every third of their life while it holds any."""
        while self._leases:
            await asyncio.sleep(self.state.lease_seconds / 3)
            by_team: defaultdict[str, list[str]] = defaultdict(list)
            for ticket, lease in self._leases.items():
                if lease is not None:
                    by_team[ticket.team].append(lease)
            # Logged by the state; renewed on the next round if Redis is back in time.
            with contextlib.suppress(SharedStateDown):
                await self.state.renew(by_team)

    async def _sync_loop(self) -> None:
        """Send the charges, take back every replica's counters; ends when this one idles."""
        while True:
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=REFRESH_SECONDS)
            except TimeoutError:
                if self.queue.running == 0 and not self._pending:
                    return
            self._changed.clear()
            sent = dict(self._pending)
            self._pending.clear()
            try:
                shared = await self.state.exchange(sent)
            except SharedStateDown:
                for team, delta in sent.items():  # kept for when Redis is back
                    self._pending[team] += delta
            else:
                for team, value in shared.items():
                    self.queue.set_counter(team, value + self._pending.get(team, 0.0))
            await asyncio.sleep(SYNC_SECONDS)

    def _start(self, name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = self._loops.get(name)
        if task is None or task.done():
            self._loops[name] = asyncio.ensure_future(loop())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)
