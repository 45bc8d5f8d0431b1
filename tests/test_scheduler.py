"""The scheduler in time: waiting, refusal after the bound, cancellation, weights, the chat turn."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from core.chat.request import ChatRequest
from core.chat.turn import start_chat_turn
from core.config import Settings
from core.db import upgrade_database
from core.errors import InvalidRequest, RateLimited
from core.identity import Principal
from core.scheduling.scheduler import FairScheduler
from core.scheduling.weights import WeightBook
from tests.test_chat import audit_events


def scheduler(tmp_path: Path, **settings: Any) -> FairScheduler:
    s = Settings(data_dir=tmp_path, **settings)
    upgrade_database(s.resolved_database_url)
    weights = WeightBook(s.resolved_database_url, {"sales": 1.0, "finance": 1.0})
    return FairScheduler(s, weights)


async def hold(sched: FairScheduler, team: str, release: asyncio.Event, log: list[str]) -> None:
    async with sched.place(team, 10) as place:
        log.append(team)
        place.generated(5)
        await release.wait()


async def test_a_turn_waits_for_a_place_and_gets_the_freed_one(tmp_path: Path) -> None:
    sched = scheduler(tmp_path, engine_concurrency=1, max_num_seqs=1)
    release = asyncio.Event()
    entered: list[str] = []
    first = asyncio.create_task(hold(sched, "sales", release, entered))
    second = asyncio.create_task(hold(sched, "sales", asyncio.Event(), entered))
    await asyncio.sleep(0.05)
    assert entered == ["sales"] and sched.queue.waiting("sales") == 1
    release.set()
    await first
    await asyncio.sleep(0.05)
    assert entered == ["sales", "sales"]  # the waiting turn took the freed place
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)
    assert sched.queue.running == 0


async def test_a_turn_waiting_past_the_bound_is_refused_and_holds_nothing(tmp_path: Path) -> None:
    sched = scheduler(tmp_path, engine_concurrency=1, max_num_seqs=1, fair_queue_wait_seconds=0.2)
    release = asyncio.Event()
    holder = asyncio.create_task(hold(sched, "sales", release, []))
    await asyncio.sleep(0.02)
    with pytest.raises(RateLimited) as refused:
        async with sched.place("sales", 10):
            pass
    assert refused.value.retry_after >= 1
    assert "busy" in refused.value.message and "sales" in refused.value.message
    assert sched.queue.waiting("sales") == 0 and sched.queue.running == 1
    release.set()
    await holder
    summary = {row.tenant_id: row for row in sched.log.summary()}
    assert summary["sales"].refused == 1 and summary["sales"].turns == 1
    assert summary["sales"].tokens == 15  # 10 prompt + 5 generated


async def test_cancelled_while_waiting_or_holding_gives_everything_back(tmp_path: Path) -> None:
    sched = scheduler(tmp_path, engine_concurrency=1, max_num_seqs=1)
    holder = asyncio.create_task(hold(sched, "sales", asyncio.Event(), []))
    waiter = asyncio.create_task(hold(sched, "finance", asyncio.Event(), []))
    await asyncio.sleep(0.02)
    assert sched.queue.running == 1 and sched.queue.waiting("finance") == 1
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert sched.queue.waiting("finance") == 0
    holder.cancel()
    await asyncio.gather(holder, return_exceptions=True)
    assert sched.queue.running == 0
    async with sched.place("finance", 1):  # the engine is free again
        assert sched.queue.running == 1


async def test_an_admins_weight_overrides_the_plugins_and_is_checked(tmp_path: Path) -> None:
    sched = scheduler(tmp_path)
    book = sched.weights
    assert book.weight("sales") == 1.0 and book.describe("sales").source == "plugin"
    assert book.set("sales", 3.0, actor="local:ops").weight == 3.0
    other = WeightBook(book.database_url, {"sales": 1.0, "finance": 1.0})  # another replica
    other.refresh()
    assert other.weight("sales") == 3.0 and other.weight("finance") == 1.0
    assert other.describe("sales").source == "admin"
    for bad in (0.0, -1.0, float("nan"), float("inf"), 5000.0):
        with pytest.raises(InvalidRequest):
            book.set("sales", bad, actor="local:ops")
    with pytest.raises(InvalidRequest, match="no team"):
        book.set("marketing", 2.0, actor="local:ops")
    assert book.set("sales", None, actor="local:ops").source == "plugin"
    other.refresh()
    assert other.weight("sales") == 1.0


def member(*teams: str) -> Principal:
    return Principal(
        subject="ann", email=None, kind="user", tenant_roles={t: "member" for t in teams}
    )


async def test_chat_turns_are_refused_and_audited_when_the_queue_wait_runs_out(
    services_fake: Any,
) -> None:
    """Through the chat turn: the refusal is the turn's one audit row, `rate_limited`."""
    services = services_fake
    services.settings = services.settings.model_copy(
        update={"engine_concurrency": 1, "max_num_seqs": 1, "fair_queue_wait_seconds": 0.3}
    )
    services.scheduler = FairScheduler(services.settings, services.scheduler.weights)
    services.engine.token_delay_s = 0.05
    ann = member("sales", "finance")
    ask = ChatRequest(tenant_id="sales", question="What discount?", max_tokens=40, channel="api")
    long_turn = await start_chat_turn(services, ann, ask)
    streaming = asyncio.create_task(_drain(long_turn))
    await asyncio.sleep(0.1)
    other = ChatRequest(tenant_id="finance", question="Q3 revenue?", max_tokens=4, channel="api")
    waiting = await start_chat_turn(services, ann, other)
    with pytest.raises(RateLimited):
        await _drain(waiting)
    await streaming
    rows = {row.tenant_id: row for row in audit_events(services)}
    assert rows["finance"].outcome == "rate_limited" and rows["finance"].status == 429
    assert rows["sales"].outcome == "ok"
    served = {row.tenant_id: row for row in services.scheduler.log.summary()}
    assert served["finance"].refused == 1 and served["sales"].turns == 1


async def _drain(turn: Any) -> str:
    return "".join([chunk.delta async for chunk in turn.stream()])


def test_cli_sets_and_shows_weights_and_audits_refusals(tmp_path: Path) -> None:
    """`tenantllm fairness`, as an operator runs it: a subprocess on a fresh data dir."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "TENANTLLM_DATA_DIR": str(tmp_path)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "core.cli", "fairness", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    done = cli("set", "--tenant", "finance", "--weight", "2")
    assert done.returncode == 0, done.stderr
    assert "finance: weight 2 (admin)" in done.stdout
    refused = cli("set", "--tenant", "finance", "--weight", "-3")
    assert refused.returncode != 0 and "above 0" in refused.stderr
    shown = cli("show", "--json")
    assert shown.returncode == 0, shown.stderr
    weights = {row["tenant_id"]: row for row in map(json.loads, shown.stdout.splitlines())}
    assert weights["finance"] == {"tenant_id": "finance", "weight": 2.0, "source": "admin"}
    assert weights["sales"]["source"] == "plugin"
    settings = Settings(data_dir=tmp_path)
    from sqlalchemy import select

    from core.audit.models import AuditEventRow
    from core.db import session_scope

    with session_scope(settings.resolved_database_url) as session:
        rows = session.scalars(
            select(AuditEventRow).where(AuditEventRow.action == "fairness_weight_set")
        ).all()
        outcomes = sorted((r.tenant_id, r.outcome) for r in rows)
    assert outcomes == [("finance", "error"), ("finance", "ok")]


async def test_the_engine_request_carries_the_teams_rank_as_priority(services_fake: Any) -> None:
    """A team served more than another active team is sent with a later vLLM priority."""
    services = services_fake
    services.engine.token_delay_s = 0.05
    ann = member("sales", "finance")

    async def ask(team: str, max_tokens: int = 60) -> asyncio.Task[str]:
        question = "Tell me " + "more " * 80  # the fake engine echoes it: 60 tokens each
        request = ChatRequest(team, question, max_tokens=max_tokens, channel="api")
        return asyncio.create_task(_drain(await start_chat_turn(services, ann, request)))

    running = [await ask("sales") for _ in range(4)]
    await asyncio.sleep(0.1)
    running.append(await ask("finance"))  # lifted to sales' counter: level, so rank 0
    queue = services.scheduler.queue
    while queue.running_of("finance") == 0:  # its turn has its place
        await asyncio.sleep(0.01)
    while queue.counter("sales") <= queue.counter("finance"):  # four streams outgrow one
        await asyncio.sleep(0.01)
    running += [await ask("sales", 2), await ask("finance", 2)]
    await asyncio.gather(*running)
    priorities = [(c.options.tenant_id, c.options.priority) for c in services.engine.calls]
    assert priorities[4] == ("finance", 0)
    assert priorities[5:] == [("sales", 1), ("finance", 0)]


async def test_the_admin_page_shows_each_teams_last_hour(services_fake: Any) -> None:
    from core.ui.admin_tab import fair_share_frame

    services = services_fake
    ann = member("sales", "finance")
    ask = ChatRequest("sales", "Renewals?", max_tokens=3, channel="api")
    answer = await _drain(await start_chat_turn(services, ann, ask))
    services.scheduler.weights.set("finance", 2.0, actor="local:ops")
    frame = fair_share_frame(services).set_index("team")
    assert set(frame.index) == {t.id for t in services.tenants.all()}
    sales = frame.loc["sales"]
    prompt = services.engine.calls[-1]
    assert sales["turns (1 h)"] == 1 and sales["refused (1 h)"] == 0
    used = services.engine.count_prompt_tokens(prompt.messages) + len(answer.split())
    assert sales["tokens (1 h)"] == used
    assert frame.loc["finance", "weight"] == "2 (admin)"
    assert frame.loc["finance", "turns (1 h)"] == 0 and frame.loc["development", "weight"] == "1"
