"""The fair share across app replicas, on the real Redis: the team cap, the counters, failure.

Two `FairScheduler`s on one Redis key prefix stand for two replicas (and, for the lease
expiry, a real second process killed with SIGKILL). Each test uses its own prefix and deletes
its keys after.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from core.config import Settings
from core.db import upgrade_database
from core.scheduling.redis_state import RedisSchedulingState
from core.scheduling.scheduler import FairScheduler
from core.scheduling.weights import WeightBook

REDIS_URL = "redis://127.0.0.1:6379/0"
REPO = Path(__file__).resolve().parents[1]
TEAMS = {"sales": 1.0, "finance": 1.0}

pytestmark = pytest.mark.redis


def _settings(tmp_path: Path, **values: Any) -> Settings:
    base = {"engine_concurrency": 8, "max_num_seqs": 8, "tenant_max_concurrency": 2}
    return Settings(data_dir=tmp_path, **{"redis_url": REDIS_URL, **base, **values})


def replica(settings: Settings, prefix: str, **state: Any) -> FairScheduler:
    """One app replica's scheduler on the shared state under `prefix`."""
    shared = RedisSchedulingState(settings.redis_url, key_prefix=prefix, **state)
    return FairScheduler(settings, WeightBook(settings.resolved_database_url, TEAMS), shared=shared)


def state_of(sched: FairScheduler) -> RedisSchedulingState:
    """The replica's shared state (to read the lease counts in Redis)."""
    assert sched.shared is not None
    return sched.shared.state


@pytest.fixture
async def prefix(tmp_path: Path) -> AsyncIterator[str]:
    """A key prefix of this test alone; its keys are deleted after."""
    upgrade_database(_settings(tmp_path).resolved_database_url)
    name = f"tenantllm-test:{uuid.uuid4().hex}"
    yield name
    cleaner = RedisSchedulingState(REDIS_URL, key_prefix=name)
    await cleaner.clear()
    await cleaner.close()


async def hold(sched: FairScheduler, team: str, release: asyncio.Event, log: list[str]) -> None:
    """Hold a place of `team` until `release` is set; note the team when it got in."""
    async with sched.place(team, 10) as place:
        log.append(team)
        place.generated(5)
        await release.wait()


async def until(condition: Any, timeout: float = 10.0) -> None:
    """Wait for `condition()` to hold (polling); fail the test if it never does."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def test_the_team_cap_holds_across_two_replicas(tmp_path: Path, prefix: str) -> None:
    settings = _settings(tmp_path)
    a, b = replica(settings, prefix), replica(settings, prefix)
    release_a, release_b = asyncio.Event(), asyncio.Event()
    in_a: list[str] = []
    in_b: list[str] = []
    holders = [asyncio.create_task(hold(a, "sales", release_a, in_a)) for _ in range(2)]
    await until(lambda: len(in_a) == 2)
    # Replica B has room for 8, but the team holds its 2 places on A.
    waiting = asyncio.create_task(hold(b, "sales", release_b, in_b))
    other = asyncio.create_task(hold(b, "finance", release_b, in_b))
    await until(lambda: in_b == ["finance"])  # another team is not held back
    await asyncio.sleep(0.3)  # several polls of B: still nothing for sales
    assert in_b == ["finance"] and b.queue.waiting("sales") == 1
    assert await state_of(a).held(["sales", "finance"]) == {"sales": 2, "finance": 1}
    release_a.set()
    await asyncio.gather(*holders)
    await until(lambda: in_b == ["finance", "sales"])  # a place came free: B's turn got it
    release_b.set()
    await asyncio.gather(waiting, other)
    assert await state_of(b).held(["sales", "finance"]) == {"sales": 0, "finance": 0}
    await a.close()
    await b.close()


async def test_each_replica_orders_its_queue_by_everyones_service(
    tmp_path: Path, prefix: str
) -> None:
    """Sales was served on A; on B (one place), finance's turn goes before sales' own."""
    settings = _settings(tmp_path, engine_concurrency=1, max_num_seqs=1)
    a, b = replica(settings, prefix), replica(settings, prefix)
    async with a.place("sales", 500) as place:
        place.generated(200)
    release = asyncio.Event()
    order: list[str] = []
    first = asyncio.create_task(hold(b, "finance", release, order))  # holds B's one place
    await until(lambda: order == ["finance"])
    # B learns A's charges (500 prompt + 2 x 200 output tokens) from the shared counters.
    await until(lambda: b.queue.counter("sales") == pytest.approx(900.0))
    assert a.queue.counter("sales") == pytest.approx(900.0)
    late = [asyncio.create_task(hold(b, team, release, order)) for team in ("sales", "finance")]
    await until(lambda: b.queue.waiting("sales") == 1 and b.queue.waiting("finance") == 1)
    release.set()
    await asyncio.gather(first, *late)
    # Finance's counter (one 10-token turn) is far below sales' (500 + 2 x 200) after A.
    assert order == ["finance", "finance", "sales"]
    await a.close()
    await b.close()


_CHILD = """
import asyncio, sys
from core.config import Settings
from core.scheduling.redis_state import RedisSchedulingState
from core.scheduling.scheduler import FairScheduler
from core.scheduling.weights import WeightBook

async def main():
    settings = Settings(data_dir=sys.argv[1], redis_url=sys.argv[2], tenant_max_concurrency=2)
    shared = RedisSchedulingState(settings.redis_url, key_prefix=sys.argv[3], lease_seconds=1.0)
    weights = WeightBook(settings.resolved_database_url, {"sales": 1.0})
    sched = FairScheduler(settings, weights, shared=shared)
    async def hold():
        async with sched.place("sales", 10):
            await asyncio.Event().wait()
    tasks = [asyncio.create_task(hold()) for _ in range(2)]
    while sched.queue.running < 2 or len(sched.shared._leases) < 2:
        await asyncio.sleep(0.01)
    print("holding", flush=True)
    await asyncio.gather(*tasks)

asyncio.run(main())
"""


async def test_a_killed_replicas_places_come_back_when_its_leases_expire(
    tmp_path: Path, prefix: str
) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path), REDIS_URL, prefix],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 60)
        assert line.strip() == "holding"
        here = replica(_settings(tmp_path), prefix, lease_seconds=1.0)
        assert await state_of(here).held(["sales"]) == {"sales": 2}
        got_in: list[str] = []
        waiting = asyncio.create_task(hold(here, "sales", asyncio.Event(), got_in))
        await asyncio.sleep(1.5)  # past a lease's life: the live child keeps renewing
        assert got_in == [] and here.queue.waiting("sales") == 1
        child.send_signal(signal.SIGKILL)  # no release, no renewal from now on
        child.wait(timeout=10)
        await until(lambda: got_in == ["sales"])
        assert await state_of(here).held(["sales"]) == {"sales": 1}
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await here.close()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


async def test_redis_down_falls_back_to_the_per_process_cap_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    upgrade_database(_settings(tmp_path).resolved_database_url)
    settings = _settings(tmp_path, redis_url="redis://127.0.0.1:1/0", tenant_max_concurrency=1)
    sched = FairScheduler(settings, WeightBook(settings.resolved_database_url, TEAMS))
    assert sched.shared is not None  # configured: it tries Redis first
    release = asyncio.Event()
    got_in: list[str] = []
    with caplog.at_level(logging.WARNING, logger="core.scheduling.redis_state"):
        first = asyncio.create_task(hold(sched, "sales", release, got_in))
        second = asyncio.create_task(hold(sched, "sales", release, got_in))
        await until(lambda: got_in == ["sales"])
        await asyncio.sleep(0.2)
        assert got_in == ["sales"] and sched.queue.waiting("sales") == 1  # cap 1, here
        release.set()
        await asyncio.gather(first, second)
    assert got_in == ["sales", "sales"]
    warnings = [r for r in caplog.records if "per process" in r.getMessage()]
    assert len(warnings) == 1  # once per outage, not once per call
    await sched.close()
