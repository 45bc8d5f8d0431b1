"""A real install to move around: two teams' documents, conversations, API keys and audit
events, and the check that a copy of it (restored from a backup, or migrated onto other
services) holds all of it with the teams still apart.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import text

from core.audit.auditor import AuditEvent
from core.auth import apikeys
from core.chat import conversations as conv
from core.config import Settings
from core.db import get_engine
from core.services import Services, build_services
from tests.fixtures.common import BUNDLED_MODEL_DIR
from tests.knowledge_support import write

TEAMS = ("sales", "finance")
OWNERS = {"sales": "alice", "finance": "fiona"}
DOCUMENTS = {
    "sales": [
        ("discounts.txt", "Orion discount rule {canary}: sales may give at most fifteen percent "
         "discount on annual plans, and only with a signed order form."),
        ("regions.txt", "Territory list {canary}: the northern region is served from Oslo, the "
         "southern region from Madrid."),
    ],
    "finance": [
        ("travel.txt", "Halcyon travel rule {canary}: hotel costs up to one hundred eighty euros "
         "per night are reimbursed with a receipt."),
        ("close.txt", "Month-end close {canary}: invoices received after the third working day "
         "are booked in the next period."),
    ],
}  # fmt: skip
QUESTIONS = {
    "sales": "What discount may sales give on annual plans?",
    "finance": "How much hotel cost per night is reimbursed?",
}


@dataclass
class Install:
    """What a source install holds, to be found again after a restore."""

    canary: dict[str, str]
    top: dict[str, tuple[str, str]]  # team -> (filename, snippet) of the top chunk
    documents: dict[str, set[str]]
    conversations: dict[str, str]
    key_secrets: dict[str, str]
    event_ids: set[str] = field(default_factory=set)


def install_settings(data_dir: Path, **overrides: Any) -> Settings:
    return Settings(
        data_dir=data_dir, model=str(BUNDLED_MODEL_DIR), audit_flush_interval_ms=20, **overrides
    )


def fill_install(services: Services, scratch: Path) -> Install:
    """Two teams' documents, a conversation each, an API key each, audit events."""
    db = services.settings.resolved_database_url
    install = Install({}, {}, {}, {}, {})
    for team in TEAMS:
        tenant = services.tenants.get(team)
        install.canary[team] = f"CANARY{team.upper()}{uuid.uuid4().hex[:8]}"
        files = [
            write(scratch, name, body.format(canary=install.canary[team]))
            for name, body in DOCUMENTS[team]
        ]
        outcomes = services.knowledge.ingest(tenant, files, OWNERS[team])
        assert all(o.status == "indexed" for o in outcomes), outcomes
        install.documents[team] = {d.id for d in services.knowledge.list_documents(tenant)}
        top = services.knowledge.retrieve(tenant, QUESTIONS[team])[0]
        install.top[team] = (top.filename, top.snippet)
        conversation = conv.create_conversation(db, OWNERS[team], team, f"{team} chat")
        question = conv.StoredMessage("user", QUESTIONS[team])
        messages = [question, conv.StoredMessage("assistant", "ok")]
        conv.append_messages(db, OWNERS[team], team, conversation, messages)
        install.conversations[team] = conversation
        created = apikeys.create_key(services.settings, tenant_id=team, created_by=OWNERS[team])
        install.key_secrets[team] = created.secret
        for outcome in ("ok", "denied"):
            services.auditor.record(
                AuditEvent(action="chat", outcome=outcome, tenant_id=team, user_sub=OWNERS[team])
            )
    services.auditor.flush()
    install.event_ids = event_ids(db)
    return install


def event_ids(url: str) -> set[str]:
    with get_engine(url).connect() as conn:
        return {r[0] for r in conn.execute(text("SELECT event_id FROM audit_events"))}


def check_copy(settings: Settings, install: Install) -> None:
    """Everything of `install` is in the restored install, and teams stay apart."""
    services = build_services(settings)
    try:
        db = settings.resolved_database_url
        for team in TEAMS:
            tenant = services.tenants.get(team)
            ids = {d.id for d in services.knowledge.list_documents(tenant)}
            assert ids == install.documents[team]
            top = services.knowledge.retrieve(tenant, QUESTIONS[team])[0]
            assert (top.filename, top.snippet) == install.top[team]
            for other in TEAMS:  # every question, even the other team's exact wording
                found = services.knowledge.retrieve(tenant, QUESTIONS[other], top_k=50)
                text_found = "\n".join(s.snippet for s in found)
                assert all(s.document_id in install.documents[team] for s in found)
                assert all(install.canary[o] not in text_found for o in TEAMS if o != team)
            # Rebuilt from the stored originals: they decrypt with the restored key.
            assert services.knowledge.reindex(tenant) >= len(install.documents[team])
            chat = conv.get_conversation(db, OWNERS[team], team, install.conversations[team])
            assert [m.content for m in chat.messages][:2] == [QUESTIONS[team], "ok"]
            assert apikeys.verify_key(settings, install.key_secrets[team]).tenant_id == team
            # A new message gets a fresh id (PostgreSQL: the sequence was moved past the rows).
            again = [conv.StoredMessage("user", "again")]
            conv.append_messages(db, OWNERS[team], team, chat.id, again)
        restored = event_ids(db)
        assert install.event_ids < restored
        assert len(restored - install.event_ids) == 1  # the restore's (migration's) own event
        assert services.auditor.verify().ok
    finally:
        services.auditor.close()
