"""Token budgets (issue 15, item 1) on the real SQLite database (PostgreSQL at the end).

The store on its own (limits, refusal texts, periods, stale reservations, concurrency),
the chat turn with the fake engine (refusal before generation, audit, what a turn counts,
cancellation, parallel turns near the limit), one turn on the real engine, the CLI, and
cross-team checks: team A's budgets never affect or reveal team B's.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from core.budgets.admin import budget_report, set_budget
from core.budgets.store import STALE_AFTER, BudgetStore
from core.chat.request import ChatRequest
from core.chat.turn import start_chat_turn
from core.cli import main
from core.db import upgrade_database
from core.errors import BudgetExceeded, BudgetUnavailable, InvalidRequest
from tests.audit_helpers import pg_database
from tests.test_chat import audit_events, principal

DECEMBER = datetime(2026, 12, 15, 10, 0, tzinfo=UTC)
ALICE = principal("alice", {"sales": "member"})
BOB = principal("bob", {"sales": "member"})
FRANK = principal("frank", {"finance": "member"})


@pytest.fixture
def url(tmp_path: Path) -> str:
    database = f"sqlite:///{tmp_path / 'budgets.db'}"
    upgrade_database(database)
    return database


def _set(url: str, tenant: str = "sales", user: str | None = None, **changes: int | None) -> None:
    set_budget(url, tenant, changes, user=user, actor="test")


def _used(
    store: BudgetStore, tenant: str, subject: str, scope: str = "team", now: Any = None
) -> tuple[int, int]:
    """(used, reserved) of the tightest `scope` budget of `subject` (now, or at `now`)."""
    allowance = store.allowance(tenant, subject, team_name=tenant, now=now)
    limit = allowance.tightest(scope)  # type: ignore[arg-type]
    assert limit is not None
    return limit.used, limit.reserved


# --- the store ------------------------------------------------------------------------------


def test_no_budget_means_nothing_is_held_or_counted(url: str) -> None:
    store = BudgetStore(url)
    assert store.reserve("sales", ALICE.subject, 10**9, team_name="Sales") is None
    assert store.allowance("sales", ALICE.subject, team_name="Sales").summary() == ""


def test_reserve_then_settle_counts_what_was_used(url: str) -> None:
    store = BudgetStore(url)
    _set(url, daily=1000, member_daily=300)
    held = store.reserve("sales", ALICE.subject, 250, team_name="Sales")
    assert held is not None
    assert held.allowance.remaining("team") == 750 and held.allowance.remaining("member") == 50
    after = store.settle(held, 120)
    assert (after.remaining("team"), after.remaining("member")) == (880, 180)
    assert _used(store, "sales", ALICE.subject) == (120, 0)
    # Bob has his own member counter; the team counter is shared.
    bob = store.allowance("sales", BOB.subject, team_name="Sales")
    assert (bob.remaining("team"), bob.remaining("member")) == (880, 300)


def test_spent_team_budget_message_names_team_period_and_reset(url: str) -> None:
    store = BudgetStore(url)
    _set(url, monthly=2_000_000)
    held = store.reserve("sales", ALICE.subject, 2_000_000, team_name="Sales", now=DECEMBER)
    assert held is not None
    store.settle(held, 2_000_000)
    with pytest.raises(BudgetExceeded) as refused:
        store.reserve("sales", BOB.subject, 10, team_name="Sales", now=DECEMBER)
    assert refused.value.message == (
        "Sales has used its 2,000,000 tokens for December; resets on 1 January."
    )
    assert refused.value.status == 429 and refused.value.code == "budget_exceeded"
    assert refused.value.remaining == 0
    assert refused.value.retry_after == int(
        (datetime(2027, 1, 1, tzinfo=UTC) - DECEMBER).total_seconds()
    )


def test_member_budget_message_says_you_and_the_day(url: str) -> None:
    store = BudgetStore(url)
    _set(url, member_daily=100)
    held = store.reserve("sales", ALICE.subject, 100, team_name="Sales", now=DECEMBER)
    assert held is not None
    store.settle(held, 100, now=DECEMBER)
    with pytest.raises(BudgetExceeded) as refused:
        store.reserve("sales", ALICE.subject, 1, team_name="Sales", now=DECEMBER)
    assert refused.value.message == (
        "You have used your 100 tokens for today (15 December); resets on 16 December."
    )
    # Bob is not Alice: his own default allowance is whole.
    assert store.reserve("sales", BOB.subject, 100, team_name="Sales", now=DECEMBER)


def test_a_request_bigger_than_what_is_left_is_refused_with_both_numbers(url: str) -> None:
    store = BudgetStore(url)
    _set(url, daily=1000)
    held = store.reserve("sales", ALICE.subject, 900, team_name="Sales", now=DECEMBER)
    assert held is not None
    store.settle(held, 900)
    with pytest.raises(BudgetExceeded) as refused:
        store.reserve("sales", ALICE.subject, 150, team_name="Sales", now=DECEMBER)
    text = refused.value.message
    assert "up to 150 tokens" in text and "only 100 of its 1,000 tokens" in text
    assert "Sales" in text and "16 December" in text and refused.value.remaining == 100
    assert store.reserve("sales", ALICE.subject, 100, team_name="Sales", now=DECEMBER)


def test_a_refusal_holds_nothing_on_any_counter(url: str) -> None:
    store = BudgetStore(url)
    _set(url, daily=1000, member_daily=10)  # the team has room, the member has not
    with pytest.raises(BudgetExceeded):
        store.reserve("sales", ALICE.subject, 50, team_name="Sales")
    assert _used(store, "sales", ALICE.subject, "team") == (0, 0)
    assert _used(store, "sales", ALICE.subject, "member") == (0, 0)


def test_member_override_beats_the_team_default_and_keys_can_be_capped(url: str) -> None:
    store = BudgetStore(url)
    _set(url, member_daily=100)
    _set(url, user=ALICE.subject, daily=1000)
    _set(url, user="key:abc123", daily=5)
    alice = store.allowance("sales", ALICE.subject, team_name="Sales")
    assert alice.remaining("member") == 1000 and alice.remaining("team") is None
    assert store.allowance("sales", BOB.subject, team_name="Sales").remaining("member") == 100
    with pytest.raises(BudgetExceeded):
        store.reserve("sales", "key:abc123", 6, team_name="Sales")


def test_a_new_day_and_a_new_month_start_from_zero(url: str) -> None:
    store = BudgetStore(url)
    _set(url, daily=100, monthly=150)
    held = store.reserve("sales", ALICE.subject, 100, team_name="Sales", now=DECEMBER)
    assert held is not None
    store.settle(held, 100)
    tomorrow = DECEMBER + timedelta(days=1)
    with pytest.raises(BudgetExceeded) as refused:  # a new day, but the month has only 50
        store.reserve("sales", ALICE.subject, 60, team_name="Sales", now=tomorrow)
    assert "for December" in refused.value.message
    january = datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert store.reserve("sales", ALICE.subject, 100, team_name="Sales", now=january)


def test_a_turn_that_never_settles_is_released_when_stale(url: str) -> None:
    store = BudgetStore(url)
    _set(url, daily=100)
    orphan = store.reserve("sales", ALICE.subject, 100, team_name="Sales", now=DECEMBER)
    assert orphan is not None  # its process "died": it never settles
    with pytest.raises(BudgetExceeded):
        store.reserve("sales", BOB.subject, 1, team_name="Sales", now=DECEMBER)
    later = DECEMBER + STALE_AFTER + timedelta(seconds=1)
    assert store.reserve("sales", BOB.subject, 100, team_name="Sales", now=later)
    # The late settle of the orphan still counts what it used, without giving back twice.
    store.settle(orphan, 30)
    assert _used(store, "sales", BOB.subject, now=later) == (30, 100)


def test_budgets_fail_closed_when_the_database_cannot_answer(tmp_path: Path) -> None:
    broken = BudgetStore(f"sqlite:///{tmp_path / 'never-migrated.db'}")  # no budget tables
    with pytest.raises(BudgetUnavailable, match="cannot be checked right now"):
        broken.reserve("sales", ALICE.subject, 10, team_name="Sales")


def _race(store: BudgetStore, attempts: int, amount: int) -> list[Any]:
    """`attempts` threads reserve `amount` at once; each reservation (or refusal) returned."""
    start = threading.Barrier(attempts)
    results: list[Any] = []
    lock = threading.Lock()

    def one(n: int) -> None:
        start.wait()
        try:
            result: Any = store.reserve("sales", f"user:{n % 5}", amount, team_name="Sales")
        except BudgetExceeded as exc:
            result = exc
        with lock:
            results.append(result)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(attempts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _check_race_is_exact(url: str) -> None:
    store = BudgetStore(url)
    _set(url, daily=1000)
    results = _race(store, 40, 100)
    held = [r for r in results if not isinstance(r, BudgetExceeded)]
    assert len(held) == 10 and len(results) == 40  # exactly what the budget holds
    for reservation in held:
        store.settle(reservation, 100)
    assert _used(store, "sales", "user:0") == (1000, 0)


def test_parallel_reservations_never_overspend_sqlite(url: str) -> None:
    _check_race_is_exact(url)


def test_set_budget_validates_and_changes_only_what_is_given(url: str) -> None:
    _set(url, daily=10, monthly=20)
    _set(url, monthly=None)  # "off"
    (row,) = budget_report(url, "sales")
    assert (row.daily, row.monthly) == (10, None)
    with pytest.raises(InvalidRequest, match="team setting"):
        set_budget(url, "sales", {"member_daily": 5}, user=ALICE.subject, actor="t")
    with pytest.raises(InvalidRequest, match="from 0"):
        set_budget(url, "sales", {"daily": -1}, user=None, actor="t")
    with pytest.raises(InvalidRequest, match="at least one"):
        set_budget(url, "sales", {}, user=None, actor="t")
    _set(url, daily=None)  # nothing left: the row goes
    assert budget_report(url, "sales") == []


def test_one_teams_budget_never_affects_or_shows_in_another(url: str) -> None:
    store = BudgetStore(url)
    _set(url, "sales", daily=10, member_daily=10)
    _set(url, "sales", user=FRANK.subject, daily=1)  # a sales override for a finance user
    assert store.reserve("finance", FRANK.subject, 10**6, team_name="Finance") is None
    assert store.allowance("finance", FRANK.subject, team_name="Finance").limits == ()
    _set(url, "finance", monthly=500)
    report = budget_report(url, "finance")
    assert [(r.tenant_id, r.subject) for r in report] == [("finance", "*")]
    assert {r.tenant_id for r in budget_report(url, "sales")} == {"sales"}


# --- the chat turn (fake engine) ------------------------------------------------------------


def _request(question: str = "What discount do annual contracts get?", **kw: Any) -> ChatRequest:
    return ChatRequest(tenant_id="sales", question=question, max_tokens=8, **kw)


async def _answer(services: Any, who: Any = ALICE, **kw: Any) -> Any:
    turn = await start_chat_turn(services, who, _request(**kw))
    async with aclosing(turn.stream()) as stream:
        async for _chunk in stream:
            pass
    return turn


def _counted(services: Any, who: Any = ALICE) -> tuple[int, int]:
    return _used(services.budgets, "sales", who.subject)


async def test_a_turn_counts_the_tokens_of_its_audit_event(services_fake: Any) -> None:
    _set(services_fake.settings.resolved_database_url, daily=100_000, member_daily=50_000)
    turn = await _answer(services_fake)
    (event,) = [e for e in audit_events(services_fake) if e.action == "chat"]
    assert event.outcome == "ok" and event.tokens_out > 0
    assert _counted(services_fake) == (event.tokens_in + event.tokens_out, 0)
    assert turn.allowance.remaining("team") == 100_000 - event.tokens_in - event.tokens_out
    assert "You: " in turn.allowance.summary() and "Sales: " in turn.allowance.summary()


async def test_a_spent_budget_refuses_before_generation_audited(services_fake: Any) -> None:
    _set(services_fake.settings.resolved_database_url, monthly=0)
    with pytest.raises(BudgetExceeded, match=r"^Sales has used its 0 tokens for \w+; resets on"):
        await start_chat_turn(services_fake, ALICE, _request())
    assert services_fake.engine.calls == []  # never generated
    (event,) = audit_events(services_fake)
    assert (event.outcome, event.status, event.tenant_id) == ("rate_limited", 429, "sales")
    assert "budget_exceeded" in event.flags
    assert event.error_class == "BudgetExceeded" and "Sales has used" in event.detail


async def test_a_turn_never_streamed_gives_its_reservation_back(services_fake: Any) -> None:
    _set(services_fake.settings.resolved_database_url, daily=10_000)
    turn = await start_chat_turn(services_fake, ALICE, _request())
    assert _counted(services_fake)[1] > 0
    turn.abandon()
    assert _counted(services_fake) == (0, 0)


async def test_a_stopped_answer_counts_what_it_generated(services_fake: Any) -> None:
    _set(services_fake.settings.resolved_database_url, daily=10_000)
    services_fake.engine.enqueue("one two three four five six seven eight")
    turn = await start_chat_turn(services_fake, ALICE, _request())
    async with aclosing(turn.stream()) as stream:
        async for chunk in stream:
            if chunk.completion_tokens == 3:
                break
    (event,) = [e for e in audit_events(services_fake) if e.action == "chat"]
    assert event.outcome == "cancelled" and event.tokens_out == 3
    assert _counted(services_fake) == (event.tokens_in + 3, 0)


async def test_parallel_turns_near_the_limit_never_overspend(services_fake: Any) -> None:
    """Each turn reserves prompt + max_tokens; the budget holds three of them, not four."""
    url = services_fake.settings.resolved_database_url
    probe = await start_chat_turn(services_fake, BOB, _request())
    most = probe.prompt_tokens + 8  # what one turn reserves
    probe.abandon()
    services_fake.engine.token_delay_s = 0.01  # the turns overlap while generating
    _set(url, daily=3 * most + most // 2)
    results = await asyncio.gather(
        *(_answer(services_fake, principal(f"u{n}", {"sales": "member"})) for n in range(8)),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert len(refused) == 5 and len(results) == 8
    ok = [e for e in audit_events(services_fake) if e.action == "chat" and e.outcome == "ok"]
    spent = sum(e.tokens_in + e.tokens_out for e in ok)
    assert len(ok) == 3
    used, reserved = _counted(services_fake, BOB)
    assert (used, reserved) == (spent, 0) and used <= 3 * most + most // 2


async def test_a_sales_budget_never_refuses_or_counts_finance(services_fake: Any) -> None:
    _set(services_fake.settings.resolved_database_url, "sales", daily=0)
    turn = await start_chat_turn(
        services_fake, FRANK, ChatRequest(tenant_id="finance", question="Budget?", max_tokens=4)
    )
    assert turn.allowance is None  # finance has no budget: nothing of sales is shown
    turn.abandon()
    with pytest.raises(BudgetExceeded):
        await start_chat_turn(services_fake, ALICE, _request())


# --- the real engine, end to end ------------------------------------------------------------


@pytest.mark.engine
async def test_real_engine_turn_is_counted_exactly(services: Any) -> None:
    _set(services.settings.resolved_database_url, daily=1_000_000)
    turn = await _answer(services)
    (event,) = [e for e in audit_events(services) if e.action == "chat"]
    assert event.outcome == "ok" and event.tokens_out > 0
    assert _counted(services) == (event.tokens_in + event.tokens_out, 0)
    assert turn.allowance.remaining() == 1_000_000 - event.tokens_in - event.tokens_out


# --- the CLI --------------------------------------------------------------------------------


@pytest.fixture
def cli(settings_env: Path) -> Iterator[Any]:
    """Run `tenantllm ...` in this process on the test's data dir."""

    def run(*args: str) -> Any:
        return CliRunner().invoke(main, list(args), catch_exceptions=False)

    yield run


def _cli_events(settings_env: Path) -> list[Any]:
    from core.audit.auditor import AuditFilters, Auditor
    from core.config import Settings

    auditor = Auditor(Settings(data_dir=settings_env))
    try:
        rows = auditor.query(AuditFilters()).rows  # newest first
        return [e for e in reversed(rows) if e.action == "budget_set"]
    finally:
        auditor.close()


def test_cli_set_and_show_are_scoped_and_audited(cli: Any, settings_env: Path) -> None:
    done = cli(
        "budgets", "set", "--tenant", "sales", "--daily", "2,000,000", "--member-daily", "5000"
    )
    assert done.exit_code == 0, done.output
    assert "daily=2,000,000" in done.output
    assert (
        cli("budgets", "set", "--tenant", "sales", "--user", "user:alice", "--daily", "9").exit_code
        == 0
    )
    assert cli("budgets", "set", "--tenant", "finance", "--monthly", "7").exit_code == 0
    shown = cli("budgets", "show", "--tenant", "sales", "--json")
    rows = [json.loads(line) for line in shown.output.splitlines()]
    assert {r["tenant_id"] for r in rows} == {"sales"}
    assert {(r["subject"], r["daily"]) for r in rows} == {("*", 2_000_000), ("user:alice", 9)}
    everything = cli("budgets", "show").output
    assert "finance" in everything and "sales" in everything
    events = _cli_events(settings_env)
    assert [(e.outcome, e.tenant_id) for e in events] == [
        ("ok", "sales"),
        ("ok", "sales"),
        ("ok", "finance"),
    ]
    assert events[0].user_sub.startswith("local:") and "daily=2,000,000" in events[0].detail


def test_cli_bad_input_is_one_line_nothing_stored_and_audited(cli: Any, settings_env: Path) -> None:
    bad = cli("budgets", "set", "--tenant", "sales", "--daily", "lots")
    assert bad.exit_code == 1 and "takes a number of tokens or 'off'" in bad.output
    wrong = cli("budgets", "set", "--tenant", "sales", "--user", "u", "--member-daily", "3")
    assert wrong.exit_code == 1 and "team setting" in wrong.output
    unknown = cli("budgets", "set", "--tenant", "nope", "--daily", "3")
    assert unknown.exit_code == 1
    assert cli("budgets", "show", "--json").output == ""  # nothing was stored
    events = _cli_events(settings_env)
    assert [e.outcome for e in events] == ["error"] * 3
    assert [e.tenant_id for e in events] == ["sales", "sales", None]
    assert "lots" in events[0].detail


# --- PostgreSQL -----------------------------------------------------------------------------


@pytest.mark.postgres
def test_parallel_reservations_never_overspend_postgres() -> None:
    with pg_database("tlm_budgets") as pg_url:
        _check_race_is_exact(pg_url)


@pytest.mark.postgres
def test_budgets_on_postgres_refuse_and_report_per_team() -> None:
    with pg_database("tlm_budgets") as pg_url:
        store = BudgetStore(pg_url)
        _set(pg_url, "sales", monthly=2_000_000)
        held = store.reserve("sales", ALICE.subject, 2_000_000, team_name="Sales", now=DECEMBER)
        assert held is not None
        store.settle(held, 2_000_000)
        with pytest.raises(BudgetExceeded, match="resets on 1 January"):
            store.reserve("sales", BOB.subject, 1, team_name="Sales", now=DECEMBER)
        assert store.reserve("finance", FRANK.subject, 10, team_name="Finance") is None
        assert [r.tenant_id for r in budget_report(pg_url, "sales")] == ["sales"]


# --- the UI line under the chat (handlers, no browser) --------------------------------------


@pytest.fixture
def signed_in_alice(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Alice (a sales member) is the signed-in user of every Gradio call of these tests."""
    monkeypatch.setattr("core.ui.session.principal_of", lambda request: ALICE)
    return ALICE


async def test_ui_line_shows_what_is_left_and_only_for_own_teams(
    services_fake: Any, signed_in_alice: Any
) -> None:
    import gradio as gr

    from core.ui.chat_tab import allowance_line

    url = services_fake.settings.resolved_database_url
    assert allowance_line(services_fake, "sales", None) == ""  # no budget: no line
    _set(url, "sales", daily=10_000, member_daily=2_000)
    _set(url, "finance", daily=777)
    await _answer(services_fake)
    (event,) = [e for e in audit_events(services_fake) if e.action == "chat"]
    spent = event.tokens_in + event.tokens_out
    line = allowance_line(services_fake, "sales", None)
    assert (
        line
        == f"You: {2_000 - spent:,} tokens left today · Sales: {10_000 - spent:,} tokens left today"
    )
    with pytest.raises(gr.Error):  # not her team: refused (and audited), nothing shown
        allowance_line(services_fake, "finance", None)
    assert "777" not in line
    denied = [e for e in audit_events(services_fake) if e.outcome == "denied"]
    assert [e.tenant_id for e in denied] == ["finance"]


def test_ui_line_is_wired_after_every_existing_event(services_fake: Any) -> None:
    """New events come last (Gradio numbers events in order); the answers refresh the line."""
    import gradio as gr

    from core.ui.chat_tab import build_chat_tab

    with gr.Blocks() as blocks:
        team = gr.Dropdown(choices=["sales"], value="sales")
        build_chat_tab(services_fake, team)
    fns = list(blocks.fns.values())
    names = [f.api_name for f in fns]
    first_new = min(i for i, f in enumerate(fns) if "chat-allowance" in _outputs(f))
    assert names.index("chat_allowance") >= first_new
    assert all("chat-allowance" not in _outputs(f) for f in fns[:first_new])
    assert {"chat_send", "chat_send_btn", "chat_stop", "conversation_open"} <= set(
        names[:first_new]
    )
    refreshes = [f for f in fns if "chat-allowance" in _outputs(f)]
    assert len(refreshes) == 3  # after Enter, after Send, on a team switch


def _outputs(fn: Any) -> set[str]:
    return {getattr(block, "elem_id", None) or "" for block in fn.outputs}
