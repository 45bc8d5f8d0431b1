"""Token-fair admission to the shared engine: the Virtual Token Counter, with no clock and no I/O.

After Sheng et al., "Fairness in Serving Large Language Models" (OSDI 2024). Each team has a
counter of the service it received, in weighted tokens: a request's prompt tokens are charged
when it is admitted to the engine and its output tokens as they are generated, each divided by
the team's weight. Whenever the engine has room, the waiting request of the team with the
smallest counter goes first. So, under contention, backlogged teams receive service in
proportion to their weights; a team alone gets the whole engine (nothing waits while there is
room: the policy is work-conserving).

Two details keep it fair in time, not only on average:
- *Counter lift*: a team that becomes active after being idle starts at the smallest counter of
  the teams active now (or, if none is, at the counter of the team that went idle last), never
  below its own. So idle time is not saved up as credit for a burst later.
- *Guaranteed share*: beyond `capacity`, a team running fewer requests than its weighted share
  of `capacity` is still admitted, up to `ceiling` in all (the engine's own batch limit). A
  quiet team therefore never waits for a noisy team's long answers to finish; the noisy team
  simply gets no new request in until the total is below `capacity` again.

`team_cap` is a safety limit per team (no team holds more than that many generations), not the
fairness mechanism. Each admitted ticket carries its team's `rank` (how many active teams have
been served less), which the chat turn adds to the engine request's priority: inside vLLM's
own batch, too, the least-served team's prompt is prefilled first. Time, waiting and refusals
are the caller's (core/scheduling/scheduler.py).

Several app replicas share one engine (core/scheduling/shared_places.py): each charge is also
reported to `on_charge` (team, weighted delta) for the shared counters, which come back
through `set_counter`; `hold_elsewhere` says how many places of a team other replicas hold
(so the team cap counts them), and `requeue` undoes an admission the shared cap refused.
Not thread-safe: one event loop drives it.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

# Output tokens cost more engine time than prompt tokens (a decode step each, where a prompt is
# prefilled in one batch); VTC's evaluation weighs them 2:1 as well.
PROMPT_TOKEN_COST = 1.0
OUTPUT_TOKEN_COST = 2.0

_sequence = itertools.count()


@dataclass(eq=False)
class Ticket:
    """One request waiting for, or holding, a place in the engine."""

    team: str
    prompt_tokens: int
    seq: int = field(default_factory=lambda: next(_sequence))
    admitted: bool = False
    output_charged: int = 0
    rank: int = 0  # set on admission: active teams served less than this one (0: the least)


@dataclass
class _Team:
    counter: float = 0.0
    queue: deque[Ticket] = field(default_factory=deque)
    running: int = 0
    elsewhere: int = 0  # places the team holds on other replicas (shared cap)

    @property
    def active(self) -> bool:
        return bool(self.queue) or self.running > 0


class FairQueue:
    """Per-team queues admitted in the order of each team's weighted service so far."""

    def __init__(
        self,
        *,
        capacity: int,
        ceiling: int,
        team_cap: int,
        weight: Callable[[str], float],
    ) -> None:
        """`capacity`: requests in the engine at once for everyone; `ceiling` (>= capacity):
        the most ever, counting guaranteed shares; `weight(team)` > 0: the team's share."""
        if not 1 <= capacity <= ceiling:
            raise ValueError("need 1 <= capacity <= ceiling")
        self.capacity = capacity
        self.ceiling = ceiling
        self.team_cap = team_cap
        self._weight = weight
        self._teams: dict[str, _Team] = {}
        self._running = 0
        self._last_idle_counter = 0.0
        # Told every weighted charge (team, delta): the shared counters' feed, if any.
        self.on_charge: Callable[[str, float], None] | None = None

    # --- what callers do --------------------------------------------------------------------
    def arrive(self, ticket: Ticket) -> list[Ticket]:
        """Queue `ticket` (lifting an idle team's counter); return the tickets admitted now."""
        team = self._teams.setdefault(ticket.team, _Team())
        if not team.active:
            lifted = max(team.counter, self._lift_floor(exclude=ticket.team))
            self._report(ticket.team, lifted - team.counter)
            team.counter = lifted
        team.queue.append(ticket)
        return self.admit_ready()

    def charge_output(self, ticket: Ticket, completion_tokens: int) -> None:
        """Charge the output tokens `ticket` has generated so far (a running total)."""
        new = completion_tokens - ticket.output_charged
        if new > 0:
            ticket.output_charged = completion_tokens
            self._charge(ticket.team, OUTPUT_TOKEN_COST * new / self._weight_of(ticket))

    def finish(self, ticket: Ticket) -> list[Ticket]:
        """Take `ticket` out (done, failed, timed out or cancelled); return tickets admitted now."""
        team = self._teams[ticket.team]
        if ticket.admitted:
            ticket.admitted = False
            team.running -= 1
            self._running -= 1
        elif ticket in team.queue:
            team.queue.remove(ticket)
        if not team.active:
            self._last_idle_counter = team.counter
        return self.admit_ready()

    def admit_ready(self) -> list[Ticket]:
        """Admit waiting tickets while the engine has room for them, smallest counter first."""
        admitted = []
        while (ticket := self._next()) is not None:
            team = self._teams[ticket.team]
            team.queue.popleft()
            ticket.rank = sum(
                1 for t in self._teams.values() if t.active and t.counter < team.counter
            )
            team.running += 1
            self._running += 1
            self._charge(ticket.team, self._prompt_cost(ticket))
            ticket.admitted = True
            admitted.append(ticket)
        return admitted

    # --- what the shared state (other replicas) tells ---------------------------------------
    def requeue(self, ticket: Ticket) -> list[Ticket]:
        """Undo `ticket`'s admission (the shared cap refused it): back to the head of its
        team's queue, its prompt charge taken back; return the tickets admitted instead."""
        if not ticket.admitted:
            return []
        team = self._teams[ticket.team]
        ticket.admitted = False
        team.running -= 1
        self._running -= 1
        self._charge(ticket.team, -self._prompt_cost(ticket))
        team.queue.appendleft(ticket)
        return self.admit_ready()

    def hold_elsewhere(self, team: str, places: int) -> None:
        """`places` of the team's generations run on other replicas (the team cap counts them)."""
        self._teams.setdefault(team, _Team()).elsewhere = max(0, places)

    def set_counter(self, team: str, value: float) -> None:
        """The team's counter as the replicas share it (not reported to `on_charge`)."""
        self._teams.setdefault(team, _Team()).counter = value

    # --- what the admin page and the tests read ---------------------------------------------
    @property
    def running(self) -> int:
        """Requests in the engine now, all teams."""
        return self._running

    def counter(self, team: str) -> float:
        """The team's virtual token counter (0 for a team never seen)."""
        return self._teams[team].counter if team in self._teams else 0.0

    def waiting(self, team: str) -> int:
        """The team's requests waiting for the engine."""
        return len(self._teams[team].queue) if team in self._teams else 0

    def running_of(self, team: str) -> int:
        """The team's requests in the engine now."""
        return self._teams[team].running if team in self._teams else 0

    # --- the policy -------------------------------------------------------------------------
    def _weight_of(self, ticket: Ticket) -> float:
        return self._weight(ticket.team)

    def _prompt_cost(self, ticket: Ticket) -> float:
        return PROMPT_TOKEN_COST * ticket.prompt_tokens / self._weight_of(ticket)

    def _charge(self, team: str, delta: float) -> None:
        """Add `delta` weighted tokens to the team's counter."""
        self._teams[team].counter += delta
        self._report(team, delta)

    def _report(self, team: str, delta: float) -> None:
        if delta and self.on_charge is not None:
            self.on_charge(team, delta)

    def _lift_floor(self, exclude: str) -> float:
        counters = [t.counter for name, t in self._teams.items() if t.active and name != exclude]
        return min(counters) if counters else self._last_idle_counter

    def _next(self) -> Ticket | None:
        """The head ticket of the eligible team with the smallest counter (ties: oldest)."""
        if self._running >= self.ceiling:
            return None
        share = self._share_of() if self._running >= self.capacity else None
        best: tuple[float, int] | None = None
        chosen: Ticket | None = None
        for name, team in self._teams.items():
            if not team.queue or team.running + team.elsewhere >= self.team_cap:
                continue
            if share is not None and team.running >= share(name):  # full: only within share
                continue
            key = (team.counter, team.queue[0].seq)
            if best is None or key < best:
                best, chosen = key, team.queue[0]
        return chosen

    def _share_of(self) -> Callable[[str], float]:
        """Each team's weighted share of `capacity` among the teams active now (at least 1)."""
        total = sum(self._weight(n) for n, t in self._teams.items() if t.active) or 1.0
        return lambda name: max(1.0, self.capacity * self._weight(name) / total)

    def _rank(self, team: _Team) -> int:
        return sum(1 for t in self._teams.values() if t.active and t.counter < team.counter)
