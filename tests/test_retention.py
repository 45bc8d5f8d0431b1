"""Retention per team: old conversations deleted, old prompt text dropped, the chain verifies.

Real SQLite and PostgreSQL (a throw-away database per test), real audit writer. Team A's
policy never touches team B's rows; rows hashed over their text before migration 0008 keep
it (and are counted); an edited prompt text is still caught after the change to digests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import insert, select, text, update

from core.audit.auditor import AuditEvent, to_payload
from core.audit.chain import GENESIS_HASH, compute_hash, format_time, payload_to_row
from core.audit.models import AuditEventRow
from core.audit.query import AuditFilters
from core.audit.writer import append_batch
from core.chat import conversations as conv
from core.chat import feedback
from core.cli import main
from core.config import Settings
from core.db import get_engine, utcnow
from core.errors import InvalidRequest
from core.retention.job import retention_loop
from core.retention.policy import parse_days, policies, set_override
from core.retention.run import apply_retention
from core.services import Services, build_services
from core.tenancy import PromptTemplate, Tenant, TenantRegistry
from tests.audit_helpers import fresh_database
from tests.test_feedback import answer_ids, conversation, source

OLD = timedelta(days=40)
T = AuditEventRow.__table__


def team(tenant_id: str, conversations: int | None, prompt_text: int | None) -> Tenant:
    return Tenant(
        id=tenant_id,
        display_name=tenant_id.title(),
        description="",
        prompt=PromptTemplate(system="You help."),
        retention_conversation_days=conversations,
        retention_prompt_text_days=prompt_text,
    )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def services(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Services]:
    """Sales keeps 30 days of both; finance keeps everything (its plugin sets nothing)."""
    with fresh_database(request.param, tmp_path) as url:
        settings = Settings(data_dir=tmp_path, database_url=url, audit_prompt_text=True)
        tenants = TenantRegistry([team("sales", 30, 30), team("finance", None, None)])
        built = build_services(settings, tenants=tenants)
        await built.auditor.start()
        try:
            yield built
        finally:
            await built.auditor.stop()


def audit_row(url: str, tenant: str, prompt: str, age: timedelta) -> None:
    """One chained audit row with prompt text, `age` old (hashed with that time)."""
    payload = to_payload(
        AuditEvent(action="chat", outcome="ok", tenant_id=tenant, prompt_text=prompt), True
    )
    payload["created_at"] = format_time(utcnow() - age)
    append_batch(url, [payload])


def legacy_row(url: str, tenant: str, prompt: str, age: timedelta) -> None:
    """A row as written before migration 0008: no digest, hashed over the text itself."""
    payload = to_payload(
        AuditEvent(action="chat", outcome="ok", tenant_id=tenant, prompt_text=prompt), True
    )
    payload["created_at"] = format_time(utcnow() - age)
    with get_engine(url).begin() as db:
        head = db.execute(select(T.c.seq, T.c.hash).order_by(T.c.seq.desc()).limit(1)).first()
        seq, prev = (head[0] + 1, head[1]) if head else (1, GENESIS_HASH)
        row = payload_to_row(payload, seq, prev)
        row["prompt_text_sha256"] = None
        row["hash"] = compute_hash(seq, prev, payload)  # the old form: over the text
        db.execute(insert(T), [row])


def idle_conversation(url: str, owner: str, tenant: str, age: timedelta) -> str:
    cid = conversation(url, owner, tenant, [source(f"{tenant}-doc", f"{tenant}.md")])
    [mid] = answer_ids(url, owner, tenant, cid)
    feedback.rate_answer(url, owner, tenant, cid, mid, "down")
    with get_engine(url).begin() as db:  # conversations are not chained: backdate directly
        db.execute(
            update(conv.ConversationRow)
            .where(conv.ConversationRow.id == cid)
            .values(updated_at=utcnow() - age)
        )
    return cid


def texts(url: str, tenant: str) -> list[str | None]:
    with get_engine(url).connect() as db:
        query = select(T.c.prompt_text).where(T.c.tenant_id == tenant, T.c.action == "chat")
        return sorted(db.scalars(query), key=lambda t: t or "")


def ids(url: str, owner: str, tenant: str) -> set[str]:
    return {c.id for c in conv.list_conversations(url, owner, tenant)}


async def test_retention_of_one_team_keeps_the_chain_and_the_other_team(services: Services) -> None:
    url = services.settings.resolved_database_url
    legacy_row(url, "sales", "sales legacy question", OLD)
    audit_row(url, "sales", "sales old question", OLD)
    audit_row(url, "sales", "sales new question", timedelta(0))
    audit_row(url, "finance", "finance old question", OLD)
    old_sales = idle_conversation(url, "alice", "sales", OLD)
    new_sales = idle_conversation(url, "alice", "sales", timedelta(days=2))
    old_fin = idle_conversation(url, "carol", "finance", OLD)
    head = services.auditor.verify()
    assert head.ok, head.message

    [result] = apply_retention(services, actor="test")

    assert (result.tenant_id, result.conversations_deleted) == ("sales", 1)
    assert (result.prompt_texts_dropped, result.prompt_texts_kept_legacy) == (1, 1)
    assert ids(url, "alice", "sales") == {new_sales} and old_sales not in ids(url, "alice", "sales")
    assert texts(url, "sales") == [None, "sales legacy question", "sales new question"]
    # Team B: its old conversation, its rating and its old prompt text are all still there.
    assert ids(url, "carol", "finance") == {old_fin}
    assert texts(url, "finance") == ["finance old question"]
    assert [s.filename for s in feedback.document_feedback(url, "finance")] == ["finance.md"]
    assert [s.rated for s in feedback.document_feedback(url, "sales")] == [1]  # the new one
    # The chain verifies, and the head kept before retention is still in it.
    services.auditor.flush()
    report = services.auditor.verify(expect_head=head.head_hash)
    assert report.ok, report.message
    [event] = services.auditor.query(AuditFilters(action="retention")).rows
    assert event.tenant_id == "sales" and event.user_sub == "test"
    assert "1 conversations deleted, 1 prompt texts dropped, 1 kept" in (event.detail or "")


async def test_an_edited_prompt_text_still_breaks_the_chain(services: Services) -> None:
    url = services.settings.resolved_database_url
    audit_row(url, "sales", "what is the discount?", timedelta(0))
    audit_row(url, "sales", "second", timedelta(0))
    assert services.auditor.verify().ok
    with get_engine(url).begin() as db:
        db.execute(text("UPDATE audit_events SET prompt_text = 'forged' WHERE seq = 1"))
    report = services.auditor.verify()
    assert not report.ok and report.first_bad_seq == 1
    assert "prompt text does not match its digest" in report.message
    with get_engine(url).begin() as db:  # and the digest cannot be dropped to hide it
        db.execute(text("UPDATE audit_events SET prompt_text_sha256 = NULL WHERE seq = 1"))
    assert services.auditor.verify().first_bad_seq == 1


async def test_admin_override_wins_over_the_plugin(services: Services) -> None:
    url = services.settings.resolved_database_url
    sales, finance = services.tenants.get("sales"), services.tenants.get("finance")
    set_override(url, sales, {"conversation_days": 0}, actor="admin")  # keep forever
    set_override(url, finance, {"conversation_days": 10}, actor="admin")
    found = {p.tenant_id: p for p in policies(url, services.tenants.all())}
    assert (found["sales"].conversation_days, found["sales"].conversation_source) == (None, "admin")
    assert (found["sales"].prompt_text_days, found["sales"].prompt_text_source) == (30, "plugin")
    assert (found["finance"].conversation_days, found["finance"].prompt_text_days) == (10, None)
    old_sales = idle_conversation(url, "alice", "sales", OLD)
    old_fin = idle_conversation(url, "carol", "finance", OLD)
    results = {r.tenant_id: r for r in apply_retention(services, actor="test")}
    assert (
        results["sales"].conversations_deleted == 0
        and results["finance"].conversations_deleted == 1
    )
    assert ids(url, "alice", "sales") == {old_sales} and old_fin not in ids(url, "carol", "finance")
    # Back to the plugin's: the override row goes away once nothing is overridden.
    set_override(url, sales, {"conversation_days": None}, actor="admin")
    assert policies(url, [sales])[0].conversation_source == "plugin"
    with pytest.raises(InvalidRequest):
        set_override(url, sales, {}, actor="admin")
    with pytest.raises(InvalidRequest):
        parse_days("--conversations", "-3")


async def test_the_app_job_applies_retention(services: Services) -> None:
    url = services.settings.resolved_database_url
    old = idle_conversation(url, "alice", "sales", OLD)
    job = asyncio.create_task(retention_loop(services, interval_seconds=0.2, first_delay=0))
    try:
        for _ in range(200):  # until the first pass has run (a deadline, not a timing claim)
            if old not in ids(url, "alice", "sales"):
                break
            await asyncio.sleep(0.1)
    finally:
        job.cancel()
    assert old not in ids(url, "alice", "sales")


def test_tenant_declarations_are_checked() -> None:
    assert team("sales", 30, None).problems() == []
    assert team("sales", 0, None).problems() == [
        "retention_conversation_days must be a number of days from 1 to 36500, or None"
    ]


@pytest.fixture
def cli_env(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("TENANTLLM_AUDIT_FLUSH_INTERVAL_MS", "10")
    yield settings_env


def test_cli_set_show_run(cli_env: Path) -> None:
    runner = CliRunner()
    url = f"sqlite:///{cli_env / 'tenantllm.db'}"
    done = runner.invoke(main, ["retention", "run"])
    assert done.exit_code == 0, done.output
    assert "nothing removed" in done.output
    done = runner.invoke(main, ["retention", "set", "--tenant", "sales", "--conversations", "30"])
    assert done.exit_code == 0, done.output
    assert "conversations 30 days (admin)" in done.output
    old = idle_conversation(url, "alice", "sales", OLD)
    fin = idle_conversation(url, "carol", "finance", OLD)
    done = runner.invoke(main, ["retention", "show", "--json"])
    rows = {r["tenant_id"]: r for r in map(json.loads, done.output.splitlines())}
    assert rows["sales"]["conversation_days"] == 30 and rows["finance"]["conversation_days"] is None
    done = runner.invoke(main, ["retention", "run"])
    assert done.exit_code == 0, done.output
    assert "sales" in done.output and "1 conversations deleted" in done.output
    assert "finance" not in done.output
    assert old not in ids(url, "alice", "sales") and ids(url, "carol", "finance") == {fin}
    bad = runner.invoke(main, ["retention", "set", "--tenant", "sales", "--prompt-text", "soon"])
    assert bad.exit_code == 1 and "takes days" in bad.output
    unknown = runner.invoke(main, ["retention", "set", "--tenant", "nope", "--conversations", "3"])
    assert unknown.exit_code == 1
