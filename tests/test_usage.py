"""Usage for chargeback (issue 15, item 2): sums from the audit log, on SQLite and PostgreSQL.

A varied log (two teams, several members, three UTC days, ok/error/cancelled turns with
tokens, refused turns and global rows without tokens, UI and API turns) is written through
the real Auditor; then every usage number is checked against a sum over the audit rows
themselves, by team, by member and per day, and the caller's scope (a team admin's teams) is
applied in SQL. The CLI and a real chat turn (fake engine, budgets on) close the loop: the
usage of a turn equals what its budget counted.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterator
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from core.audit.auditor import AuditEvent, Auditor
from core.audit.query import AuditFilters, AuditRecord, iter_records
from core.budgets.admin import set_budget
from core.chat.request import ChatRequest
from core.chat.turn import start_chat_turn
from core.cli import main
from core.errors import InvalidRequest
from core.usage.export import CSV_COLUMNS, csv_text
from core.usage.query import CHAT_ACTIONS, UsageQuery, usage_rows
from tests.audit_helpers import pg_database, scalar, settings_for, sqlite_url
from tests.test_chat import principal

NOW = datetime.now(UTC)
DAYS = [NOW - timedelta(days=2), NOW - timedelta(days=1), NOW]


def _log(settings: Any) -> None:
    """The varied log; days are set afterwards in SQL (the chain is not what is tested)."""
    auditor = Auditor(settings)
    n = 0
    for day_index in range(3):
        for tenant, members in (("sales", ("ann", "bo", "cy")), ("finance", ("fay", "gus"))):
            for m, member in enumerate(members):
                for outcome, action, tokens in (
                    ("ok", "chat", (40 + n, 7 + m)),
                    ("ok", "api_chat", (90 + n, 3 * n)),
                    ("error", "chat", (11, 2)),  # failed mid-stream: used the engine
                    ("cancelled", "chat", (5 + day_index, 1)),
                    ("rate_limited", "chat", (0, 0)),  # refused before generation
                    ("denied", "api_chat", (0, 0)),
                ):
                    n += 1
                    auditor.record(
                        AuditEvent(
                            action=action,
                            outcome=outcome,  # type: ignore[arg-type]
                            user_sub=f"sub-{member}",
                            user_email=f"{member}@example.org",
                            tenant_id=tenant,
                            request_id=f"d{day_index}-{n}",
                            tokens_in=tokens[0],
                            tokens_out=tokens[1],
                        )
                    )
        # Rows that are not chat turns: a sign-in without a tenant, an upload of a team.
        auditor.record(AuditEvent(action="login", outcome="ok", request_id=f"d{day_index}-l"))
        auditor.record(
            AuditEvent(action="ui_upload", outcome="ok", tenant_id="sales", request_id=f"u{n}")
        )
    auditor.close()
    url = settings.resolved_database_url
    for day_index, day in enumerate(DAYS):
        scalar(
            url,
            "UPDATE audit_events SET created_at = :day WHERE request_id LIKE :prefix",
            day=day.replace(hour=12, minute=0, second=0, microsecond=0),
            prefix=f"d{day_index}-%",
        )


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        database = sqlite_url(tmp_path)
        _log(settings_for(tmp_path, database))
        yield database
        return
    with pg_database("tlm_usage") as database:
        _log(settings_for(tmp_path, database))
        yield database


def _records(url: str) -> list[AuditRecord]:
    return list(iter_records(url, AuditFilters()))


def _expected(url: str, key: Any) -> dict[Any, tuple[int, int, int, set[str]]]:
    """Sums over the audit rows themselves, in Python: the independent side of the check."""
    sums: dict[Any, list[Any]] = defaultdict(lambda: [0, 0, 0, set()])
    for r in _records(url):
        if r.action in CHAT_ACTIONS and r.tenant_id and r.tokens_in + r.tokens_out > 0:
            s = sums[key(r)]
            s[0] += r.tokens_in
            s[1] += r.tokens_out
            s[2] += 1
            s[3].add(r.user_sub)
    return {k: (a, b, c, d) for k, (a, b, c, d) in sums.items()}


def test_usage_by_team_and_day_agrees_with_the_audit_log(url: str) -> None:
    rows = usage_rows(url, UsageQuery(since=NOW - timedelta(days=7)), tenants=None)
    expected = _expected(url, lambda r: (r.created_at.strftime("%Y-%m-%d"), r.tenant_id))
    got = {(r.day, r.tenant_id): (r.tokens_in, r.tokens_out, r.requests, r.users) for r in rows}
    assert got == {k: (a, b, c, len(d)) for k, (a, b, c, d) in expected.items()}
    assert len(got) == 6  # 3 days x 2 teams
    # Four counted turns per member per day (refused turns used no tokens): 3 members in sales.
    assert {r.requests for r in rows if r.tenant_id == "sales"} == {12}
    assert {r.users for r in rows if r.tenant_id == "sales"} == {3}


def test_usage_by_member_over_the_window_agrees_with_the_audit_log(url: str) -> None:
    q = UsageQuery(since=NOW - timedelta(days=7), by="user", per_day=False)
    rows = usage_rows(url, q, tenants=None)
    expected = _expected(url, lambda r: (r.tenant_id, r.user_sub))
    got = {(r.tenant_id, r.user): (r.tokens_in, r.tokens_out, r.requests, r.users) for r in rows}
    assert got == {k: (a, b, c, len(d)) for k, (a, b, c, d) in expected.items()}
    assert {r.email for r in rows if r.user == "sub-ann"} == {"ann@example.org"}
    # The grand total equals the audit log's token sum over every chat row, refused included.
    chat_total = sum(r.tokens_in + r.tokens_out for r in _records(url) if r.action in CHAT_ACTIONS)
    assert sum(r.tokens for r in rows) == chat_total


def test_the_window_and_one_team(url: str) -> None:
    since = DAYS[1].replace(hour=0, minute=0, second=0, microsecond=0)
    rows = usage_rows(url, UsageQuery(since=since, tenant_id="finance"), tenants=None)
    assert {r.tenant_id for r in rows} == {"finance"}
    assert [r.day for r in rows] == [d.strftime("%Y-%m-%d") for d in DAYS[1:]]


def test_a_team_admins_scope_is_applied_in_sql(url: str) -> None:
    q = UsageQuery(since=NOW - timedelta(days=7), by="user")
    sales = usage_rows(url, q, tenants=["sales"])
    assert sales and {r.tenant_id for r in sales} == {"sales"}
    assert {r.user for r in sales} == {"sub-ann", "sub-bo", "sub-cy"}
    # Asking for another team inside a sales scope gives nothing, and no scope gives nothing.
    other = UsageQuery(since=NOW - timedelta(days=7), tenant_id="finance")
    assert usage_rows(url, other, tenants=["sales"]) == []
    assert usage_rows(url, q, tenants=[]) == []


def test_csv_has_the_rows_and_the_same_numbers(url: str) -> None:
    rows = usage_rows(url, UsageQuery(since=NOW - timedelta(days=7), by="user"), tenants=None)
    parsed = list(csv.DictReader(io.StringIO(csv_text(rows))))
    assert list(parsed[0]) == CSV_COLUMNS and len(parsed) == len(rows)
    for line, row in zip(parsed, rows, strict=True):
        assert (line["day"], line["team"], line["user"], line["email"]) == (
            row.day, row.tenant_id, row.user, row.email
        )  # fmt: skip
        assert int(line["tokens"]) == int(line["tokens_in"]) + int(line["tokens_out"])
        assert (int(line["tokens_in"]), int(line["requests"])) == (row.tokens_in, row.requests)


def test_bad_queries_are_typed_errors(url: str) -> None:
    with pytest.raises(InvalidRequest):
        usage_rows(url, UsageQuery(since=NOW, until=NOW - timedelta(days=1)), tenants=None)
    with pytest.raises(InvalidRequest):
        usage_rows(url, UsageQuery(since=NOW, by="planet"), tenants=None)  # type: ignore[arg-type]


def test_a_formula_in_an_email_does_not_reach_the_csv_as_one(tmp_path: Path) -> None:
    database = sqlite_url(tmp_path)
    auditor = Auditor(settings_for(tmp_path, database))
    auditor.record(
        AuditEvent(action="chat", outcome="ok", tenant_id="sales", user_sub="x",
                   user_email="=HYPERLINK(1)", tokens_in=3, tokens_out=4)
    )  # fmt: skip
    auditor.close()
    rows = usage_rows(database, UsageQuery(since=None, by="user"), tenants=None)
    assert "'=HYPERLINK(1)" in csv_text(rows)


# --- the CLI -----------------------------------------------------------------------------


def test_cli_usage_csv_json_and_audited(settings_env: Path) -> None:
    from core.config import Settings

    settings = Settings(data_dir=settings_env)
    database = settings.resolved_database_url
    from core.db import upgrade_database

    upgrade_database(database)
    _log(settings_for(settings_env, database))
    run = CliRunner()
    as_csv = run.invoke(main, ["usage", "--since", "7d", "--by", "team", "--csv"])
    assert as_csv.exit_code == 0, as_csv.output
    lines = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert {(line["team"], int(line["requests"])) for line in lines} == {
        ("sales", 36), ("finance", 24)
    }  # fmt: skip
    one = run.invoke(main, ["usage", "--by", "user", "--tenant", "sales", "--per-day", "--json"])
    assert one.exit_code == 0, one.output
    rows = [json.loads(line) for line in one.stdout.splitlines()]
    assert len(rows) == 9 and {r["team"] for r in rows} == {"sales"}
    assert not any("fay" in json.dumps(r) or "gus" in json.dumps(r) for r in rows)
    table = run.invoke(main, ["usage"])
    assert table.exit_code == 0 and "sales" in table.stdout and "finance" in table.stdout
    typo = run.invoke(main, ["usage", "--tenant", "sails"])
    assert typo.exit_code == 1 and "sails" in typo.stderr and "Traceback" not in typo.output
    bad = run.invoke(main, ["usage", "--since", "soon"])
    assert bad.exit_code == 2
    views = [r for r in _records(database) if r.action == "usage_view"]
    assert [v.tenant_id for v in views] == [None, "sales", None]  # the refused typo is no view


# --- a real chat turn: usage == what the budget counted == the audit row -----------------


async def test_a_chat_turns_usage_is_what_its_budget_counted(services_fake: Any) -> None:
    url = services_fake.settings.resolved_database_url
    set_budget(url, "sales", {"daily": 100_000}, user=None, actor="test")
    alice = principal("alice", {"sales": "member"})
    for question in ("What discount do annual contracts get?", "And for monthly ones?"):
        turn = await start_chat_turn(
            services_fake, alice, ChatRequest(tenant_id="sales", question=question, max_tokens=8)
        )
        async with aclosing(turn.stream()) as stream:
            async for _chunk in stream:
                pass
    services_fake.auditor.flush()
    [row] = usage_rows(url, UsageQuery(since=None, per_day=False), tenants=None)
    allowance = services_fake.budgets.allowance("sales", alice.subject, team_name="Sales")
    counted = allowance.tightest("team")
    assert counted is not None and row.requests == 2
    assert row.tokens == counted.used > 0
