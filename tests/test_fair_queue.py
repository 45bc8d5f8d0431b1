"""The fair-share policy, exactly: admission order and shares with a simulated engine.

`Sim` stands for an engine that serves a fixed budget per step: every running request gets one
output token per step, a request ends after `output_tokens` of them. Teams are closed loops
that keep `backlog` requests waiting (a new one arrives as soon as one is admitted). All of it
is deterministic: no clock, no event loop.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from core.scheduling.fair_queue import OUTPUT_TOKEN_COST, PROMPT_TOKEN_COST, FairQueue, Ticket

PROMPT = 20
OUTPUT = 10


@dataclass
class Sim:
    queue: FairQueue
    output_tokens: int = OUTPUT
    running: dict[Ticket, int] = field(default_factory=dict)  # ticket -> tokens generated
    served: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # cost, unweighted
    admitted: list[str] = field(default_factory=list)

    def take(self, tickets: list[Ticket]) -> None:
        for ticket in tickets:
            self.running[ticket] = 0
            self.admitted.append(ticket.team)
            self.served[ticket.team] += PROMPT_TOKEN_COST * ticket.prompt_tokens

    def arrive(self, team: str) -> Ticket:
        ticket = Ticket(team, PROMPT)
        self.take(self.queue.arrive(ticket))
        return ticket

    def step(self, refill: dict[str, int] | None = None) -> None:
        """One engine step: a token for every running request; finished ones leave."""
        for ticket in list(self.running):
            self.running[ticket] += 1
            self.served[ticket.team] += OUTPUT_TOKEN_COST
            self.queue.charge_output(ticket, self.running[ticket])
            if self.running[ticket] == self.output_tokens:
                del self.running[ticket]
                self.take(self.queue.finish(ticket))
        for team, backlog in (refill or {}).items():
            while self.queue.waiting(team) < backlog:
                self.arrive(team)


def make(
    capacity: int = 4,
    ceiling: int | None = None,
    team_cap: int = 64,
    weights: dict[str, float] | None = None,
) -> Sim:
    weights = weights or {}
    queue = FairQueue(
        capacity=capacity,
        ceiling=ceiling or capacity,
        team_cap=team_cap,
        weight=lambda team: weights.get(team, 1.0),
    )
    return Sim(queue)


def test_one_team_alone_gets_the_whole_engine_without_waiting() -> None:
    sim = make(capacity=4)
    for _ in range(6):
        sim.arrive("sales")
    assert sim.queue.running == 4 and sim.queue.waiting("sales") == 2  # 4 in at once
    for _ in range(OUTPUT):
        sim.step()
    assert sim.queue.running == 2 and sim.queue.waiting("sales") == 0  # next in as soon as free


def test_equal_weights_alternate_exactly_when_one_request_fits() -> None:
    sim = make(capacity=1)
    for _ in range(3):
        sim.arrive("sales")
    for _ in range(3):
        sim.arrive("finance")
    for _ in range(6 * OUTPUT):
        sim.step()
    # sales came first; then whoever has been served less goes next
    assert sim.admitted == ["sales", "finance", "sales", "finance", "sales", "finance"]


def test_backlogged_teams_share_tokens_by_weight() -> None:
    for weights in ({"sales": 1.0, "finance": 1.0}, {"sales": 2.0, "finance": 1.0}):
        sim = make(capacity=4, weights=weights)
        backlog = {"sales": 3, "finance": 3}
        sim.step(backlog)
        for _ in range(3000):
            sim.step(backlog)
        want = weights["sales"] / weights["finance"]
        got = sim.served["sales"] / sim.served["finance"]
        assert abs(got / want - 1) < 0.02, (weights, got)
        # VTC's bound on the service difference of backlogged clients: 2 x the cost of the
        # largest request, here with 4 in flight at once, counted in weighted tokens
        largest = PROMPT_TOKEN_COST * PROMPT + OUTPUT_TOKEN_COST * OUTPUT
        normalised = [sim.queue.counter(t) for t in ("sales", "finance")]
        assert abs(normalised[0] - normalised[1]) <= 2 * largest * sim.queue.capacity


def test_a_team_back_from_idle_gets_no_burst_of_credit() -> None:
    sim = make(capacity=2)
    backlog = {"sales": 4}
    for _ in range(500):  # sales alone for a long time: its counter grows, finance's does not
        sim.step(backlog)
    assert sim.queue.counter("finance") == 0
    sim.admitted.clear()
    for _ in range(40 * OUTPUT):
        sim.step({"sales": 4, "finance": 4})
    share = Counter(sim.admitted)
    # lifted to sales' counter on its return, finance gets its half, not every place
    assert abs(share["finance"] - share["sales"]) <= 2, share
    assert sim.queue.counter("finance") >= sim.queue.counter("sales") - 2 * (
        PROMPT_TOKEN_COST * PROMPT + OUTPUT_TOKEN_COST * OUTPUT
    )


def test_without_the_lift_an_idle_team_would_have_monopolised() -> None:
    """The same scenario with the lift switched off shows what the lift prevents."""
    sim = make(capacity=2)
    for _ in range(500):
        sim.step({"sales": 4})
    sim.queue._lift_floor = lambda exclude: 0.0  # type: ignore[method-assign]
    sim.admitted.clear()
    for _ in range(40 * OUTPUT):
        sim.step({"sales": 4, "finance": 4})
    share = Counter(sim.admitted)
    assert share["finance"] > 3 * share["sales"], share


def test_a_quiet_team_is_admitted_at_once_within_its_share_beyond_capacity() -> None:
    sim = make(capacity=4, ceiling=8)
    for _ in range(10):
        sim.arrive("flood")
    assert sim.queue.running == 4 and sim.queue.waiting("flood") == 6
    sim.step()
    sim.arrive("quiet")
    assert sim.queue.running_of("quiet") == 1 and sim.queue.running == 5  # no wait
    for _ in range(OUTPUT - 1):  # the flood's four finish; only three of theirs come back in
        sim.step()
    assert sim.queue.running_of("flood") == 3 and sim.queue.running == 4
    sim.step()  # the quiet turn ends: the flood has the whole capacity again
    assert sim.queue.running_of("flood") == 4 and sim.queue.running == 4


def test_the_flood_gets_nothing_beyond_capacity() -> None:
    sim = make(capacity=4, ceiling=8)
    for _ in range(10):
        sim.arrive("flood")
    sim.take(sim.queue.admit_ready())
    assert sim.queue.running == 4  # its share is the whole capacity, and it holds it


def test_the_team_cap_is_a_safety_limit() -> None:
    sim = make(capacity=8, team_cap=2)
    for _ in range(3):
        sim.arrive("sales")
    sim.arrive("finance")
    assert sim.queue.running_of("sales") == 2 and sim.queue.waiting("sales") == 1
    assert sim.queue.running_of("finance") == 1


def test_a_waiting_ticket_that_leaves_is_forgotten() -> None:
    sim = make(capacity=1)
    sim.arrive("sales")
    waiting = sim.arrive("finance")
    assert sim.queue.waiting("finance") == 1
    sim.queue.finish(waiting)  # timed out or cancelled while waiting
    assert sim.queue.waiting("finance") == 0
    for _ in range(OUTPUT):
        sim.step()
    assert sim.admitted == ["sales"] and sim.queue.running == 0


def test_an_admitted_ticket_carries_its_teams_rank() -> None:
    sim = make(capacity=4, ceiling=8)
    for _ in range(4):
        sim.arrive("flood")
    sim.step()
    quiet = sim.arrive("quiet")  # lifted to the flood's counter, which has grown since
    assert quiet.admitted and quiet.rank == 0
    late = sim.arrive("flood")
    assert not late.admitted
    sim.step()
    for _ in range(OUTPUT):
        sim.step()
    assert late.admitted and late.rank == 1  # the flood has been served more than quiet
