"""Token budgets (issue 15, item 1 leftovers): what a budget costs a turn, and where a budget
set mid-period starts.

- A team without budgets: its turns send no statement about budgets to the database (the
  budget rows are cached), and a budget set in this process applies to the very next turn.
- A change made by another process (a replica, the CLI) applies once the cached copy is old,
  or at once when the allowance line has read it; nothing is held wrongly meanwhile.
- Seeding: a budget first set on the 15th starts from the day's and month's audited usage
  (prompt + completion tokens of the team's and each member's turns), refusals and turns that
  never generated left out, other teams and other periods left out, existing counters kept.
Real SQLite (and PostgreSQL for the seeding), the fake engine for the turns.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import aclosing, contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, text, update

from core.audit.models import AuditEventRow
from core.budgets.admin import set_budget
from core.budgets.connections import budget_transaction
from core.budgets.seeding import seed_counters
from core.budgets.store import BudgetStore
from core.chat.request import ChatRequest
from core.chat.turn import start_chat_turn
from core.db import get_engine, session_scope, upgrade_database
from core.errors import BudgetExceeded
from tests.audit_helpers import pg_database, settings_for
from tests.test_budgets import ALICE, BOB, FRANK
from tests.test_chat import audit_events

DECEMBER_15 = datetime(2026, 12, 15, 10, 0, tzinfo=UTC)


@contextmanager
def budget_statements(url: str) -> Iterator[list[str]]:
    """Every SQL statement that names a budget table, sent to `url` while the block runs."""
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "budget" in statement.lower():
            seen.append(statement)

    engine = get_engine(url)
    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)


async def _answer(services: Any, who: Any = ALICE, tenant_id: str = "sales") -> Any:
    """One whole turn of `who` in `tenant_id` (streamed to its end)."""
    turn = await start_chat_turn(
        services, who, ChatRequest(tenant_id=tenant_id, question="Annual discount?", max_tokens=8)
    )
    async with aclosing(turn.stream()) as stream:
        async for _chunk in stream:
            pass
    return turn


def _set(url: str, tenant: str = "sales", user: str | None = None, **changes: int | None) -> None:
    set_budget(url, tenant, changes, user=user, actor="test")


# --- what a team without budgets pays --------------------------------------------------------


async def test_a_team_without_budgets_sends_no_budget_statement(services_fake: Any) -> None:
    url = services_fake.settings.resolved_database_url
    _set(url, "sales", daily=10**6)  # another team's budget changes nothing for finance
    await _answer(services_fake, FRANK, tenant_id="finance")  # the first turn reads the rows
    with budget_statements(url) as seen:
        turn = await _answer(services_fake, FRANK, tenant_id="finance")
        await _answer(services_fake, FRANK, tenant_id="finance")
    assert seen == [] and turn.allowance is None
    with budget_statements(url) as seen:  # a budgeted team's turn does talk to the database
        assert (await _answer(services_fake, ALICE)).allowance is not None
    assert seen


async def test_a_budget_set_in_this_process_applies_to_the_next_turn(services_fake: Any) -> None:
    url = services_fake.settings.resolved_database_url
    assert (await _answer(services_fake)).allowance is None  # cached: sales has no budget
    assert services_fake.budgets.known_without_budgets("sales")
    _set(url, daily=10**6)
    turn = await _answer(services_fake)
    assert turn.allowance is not None and turn.allowance.remaining("team") < 10**6
    _set(url, daily=None)  # and removing it applies at once too
    assert (await _answer(services_fake)).allowance is None


def _set_elsewhere(url: str, tenant: str, daily: int) -> None:
    """A budget row written as another process would: this process is not told."""
    with session_scope(url) as session:
        session.execute(
            text(
                "INSERT INTO budgets (tenant_id, subject, daily, updated_by, updated_at) "
                "VALUES (:t, '*', :d, 'replica-2', :now)"
            ),
            {"t": tenant, "d": daily, "now": DECEMBER_15},
        )


def test_another_process_change_applies_when_the_copy_is_old(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    upgrade_database(url)
    trusting, reloading = BudgetStore(url, cache_seconds=3600), BudgetStore(url, cache_seconds=0)
    for store in (trusting, reloading):
        assert store.reserve("sales", ALICE.subject, 10, team_name="Sales") is None
    _set_elsewhere(url, "sales", 5)
    with pytest.raises(BudgetExceeded, match="only 5 of its 5 tokens"):
        reloading.reserve("sales", ALICE.subject, 10, team_name="Sales")  # its copy is old
    # The other still applies what it read (bounded by budget_cache_seconds in production)...
    assert trusting.reserve("sales", ALICE.subject, 10, team_name="Sales") is None
    # ...until the allowance line reads the rows: the disagreeing copy is dropped.
    assert trusting.allowance("sales", ALICE.subject, team_name="Sales").remaining() == 5
    with pytest.raises(BudgetExceeded, match="only 5 of its 5 tokens"):
        trusting.reserve("sales", ALICE.subject, 10, team_name="Sales")


# --- seeding from the audit log ---------------------------------------------------------------


async def _turns(services: Any) -> dict[str, Any]:
    """Turns of several members and teams, and one that never generated; by name."""
    turns = {
        "alice_1": await _answer(services, ALICE),
        "alice_2": await _answer(services, ALICE),
        "bob": await _answer(services, BOB),
        "frank": await _answer(services, FRANK, tenant_id="finance"),
    }
    never = await start_chat_turn(services, ALICE, ChatRequest(tenant_id="sales", question="Hi?"))
    never.abandon()  # audited `cancelled` with its prompt's tokens, but it used nothing
    turns["never"] = never
    return turns


def _tokens(services: Any, turn: Any) -> int:
    (row,) = audit_events(services, turn.request_id)
    return int(row.tokens_in + row.tokens_out)


async def test_a_first_budget_mid_period_starts_from_the_audited_usage(
    services_fake: Any,
) -> None:
    url = services_fake.settings.resolved_database_url
    turns = await _turns(services_fake)
    used = {name: _tokens(services_fake, turn) for name, turn in turns.items()}
    assert used["never"] > 0  # its prompt's tokens are in the row: seeding must skip it
    _set(url, daily=10**6, monthly=10**7, member_daily=10**5)
    store: BudgetStore = services_fake.budgets
    alice = store.allowance("sales", ALICE.subject, team_name="Sales")
    team_used = used["alice_1"] + used["alice_2"] + used["bob"]
    assert {(x.scope, x.window): x.used for x in alice.limits} == {
        ("team", "day"): team_used,
        ("team", "month"): team_used,
        ("member", "day"): used["alice_1"] + used["alice_2"],
    }
    assert store.allowance("sales", BOB.subject, team_name="Sales").remaining("member") == (
        10**5 - used["bob"]
    )
    # The next turn counts on top; a later change does not seed twice.
    later = await _answer(services_fake, BOB)
    _set(url, user=BOB.subject, daily=10**4)
    bob = store.allowance("sales", BOB.subject, team_name="Sales")
    assert bob.remaining("team") == 10**6 - team_used - _tokens(services_fake, later)
    assert bob.remaining("member") == 10**4 - used["bob"] - _tokens(services_fake, later)
    _set(url, "finance", daily=1000)  # finance's own usage only
    frank = store.allowance("finance", FRANK.subject, team_name="Finance")
    assert frank.remaining("team") == 1000 - used["frank"]


def _move(url: str, request_id: str, when: datetime) -> None:
    with session_scope(url) as session:
        session.execute(
            update(AuditEventRow)
            .where(AuditEventRow.request_id == request_id)
            .values(created_at=when)
        )


async def test_seeding_counts_only_the_day_and_month_it_is_set_in(services_fake: Any) -> None:
    url = services_fake.settings.resolved_database_url
    turns = await _turns(services_fake)
    used = {name: _tokens(services_fake, turn) for name, turn in turns.items()}
    _move(url, turns["alice_1"].request_id, datetime(2026, 12, 15, 9, 59, tzinfo=UTC))  # today
    _move(url, turns["alice_2"].request_id, datetime(2026, 12, 1, 0, 0, tzinfo=UTC))  # month
    _move(url, turns["bob"].request_id, datetime(2026, 11, 30, 23, 59, tzinfo=UTC))  # before
    with budget_transaction(url) as conn:
        seed_counters(conn, "sales", DECEMBER_15)
    _set(url, daily=10**6, monthly=10**7, member_monthly=10**5)
    alice = services_fake.budgets.allowance(
        "sales", ALICE.subject, team_name="Sales", now=DECEMBER_15
    )
    assert {(x.scope, x.window): x.used for x in alice.limits} == {
        ("team", "day"): used["alice_1"],
        ("team", "month"): used["alice_1"] + used["alice_2"],
        ("member", "month"): used["alice_1"] + used["alice_2"],
    }


@pytest.mark.postgres
def test_seeding_on_postgres(tmp_path: Any) -> None:
    from core.audit.auditor import AuditEvent, Auditor

    with pg_database("tlm_budgets") as url:
        auditor = Auditor(settings_for(tmp_path, url))
        rows: tuple[tuple[str, str, Any, int, int], ...] = (
            ("user:alice", "sales", "ok", 100, 20),
            ("user:alice", "sales", "rate_limited", 90, 0),  # refused: used nothing
            ("user:bob", "sales", "cancelled", 50, 5),  # stopped after 5 tokens
            ("user:frank", "finance", "ok", 1000, 1),
        )
        for sub, tenant, outcome, t_in, t_out in rows:
            auditor.record(
                AuditEvent(action="api_chat", outcome=outcome, user_sub=sub, tenant_id=tenant,
                           status=200, tokens_in=t_in, tokens_out=t_out)
            )  # fmt: skip
        auditor.flush()
        auditor.close()
        set_budget(url, "sales", {"daily": 1000, "member_daily": 500}, user=None, actor="t")
        store = BudgetStore(url)
        alice = store.allowance("sales", "user:alice", team_name="Sales")
        assert (alice.remaining("team"), alice.remaining("member")) == (1000 - 175, 500 - 120)
        held = store.reserve("sales", "user:bob", 445, team_name="Sales")  # 500 - 55 fits
        assert held is not None and held.allowance.remaining("member") == 0
