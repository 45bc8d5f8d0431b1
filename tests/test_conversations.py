"""Conversations are stored per user AND per team: no id opens another's conversation.

Runs on SQLite and on the real PostgreSQL (a throw-away database per run), through the real
migration chain (never `create_all`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.chat import conversations as conv
from core.errors import InvalidRequest, NotFound
from tests.audit_helpers import fresh_database

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database at the newest migration."""
    with fresh_database(request.param, tmp_path) as url:
        yield url


def _with_message(url: str, owner: str, tenant: str, text: str) -> str:
    cid = conv.create_conversation(url, owner, tenant, text)
    conv.append_messages(
        url,
        owner,
        tenant,
        cid,
        [
            conv.StoredMessage("user", text),
            conv.StoredMessage("assistant", f"answer to {text}", [{"filename": "a.md"}]),
        ],
    )
    return cid


def test_round_trip_rename_delete(db_url: str) -> None:
    cid = _with_message(db_url, "alice", "sales", "Quarterly   targets?")
    [summary] = conv.list_conversations(db_url, "alice", "sales")
    assert (summary.id, summary.title) == (cid, "Quarterly targets?")
    opened = conv.get_conversation(db_url, "alice", "sales", cid)
    assert [m.role for m in opened.messages] == ["user", "assistant"]
    assert opened.messages[1].sources == [{"filename": "a.md"}]

    conv.rename_conversation(db_url, "alice", "sales", cid, "Targets Q3")
    assert conv.get_conversation(db_url, "alice", "sales", cid).title == "Targets Q3"
    with pytest.raises(InvalidRequest):
        conv.rename_conversation(db_url, "alice", "sales", cid, "   ")

    conv.delete_conversation(db_url, "alice", "sales", cid)
    assert conv.list_conversations(db_url, "alice", "sales") == []
    with pytest.raises(NotFound):
        conv.get_conversation(db_url, "alice", "sales", cid)


def test_team_a_conversation_invisible_under_team_b(db_url: str) -> None:
    cid = _with_message(db_url, "alice", "sales", "canary-sales-7731")
    assert conv.list_conversations(db_url, "alice", "finance") == []
    with pytest.raises(NotFound):
        conv.get_conversation(db_url, "alice", "finance", cid)
    with pytest.raises(NotFound):
        conv.append_messages(
            db_url, "alice", "finance", cid, [conv.StoredMessage("user", "injected")]
        )
    with pytest.raises(NotFound):
        conv.rename_conversation(db_url, "alice", "finance", cid, "stolen")
    with pytest.raises(NotFound):
        conv.delete_conversation(db_url, "alice", "finance", cid)
    # Nothing of the failed attempts reached the real conversation.
    kept = conv.get_conversation(db_url, "alice", "sales", cid)
    assert kept.title == "canary-sales-7731"
    assert [m.content for m in kept.messages] == [
        "canary-sales-7731",
        "answer to canary-sales-7731",
    ]


def test_other_user_cannot_list_open_or_change(db_url: str) -> None:
    cid = _with_message(db_url, "alice", "sales", "alice-private-4410")
    mine = _with_message(db_url, "bob", "sales", "bob-own")
    listed = conv.list_conversations(db_url, "bob", "sales")
    assert [c.id for c in listed] == [mine]
    for attempt in (
        lambda: conv.get_conversation(db_url, "bob", "sales", cid),
        lambda: conv.rename_conversation(db_url, "bob", "sales", cid, "mine now"),
        lambda: conv.delete_conversation(db_url, "bob", "sales", cid),
        lambda: conv.append_messages(
            db_url, "bob", "sales", cid, [conv.StoredMessage("user", "x")]
        ),
    ):
        with pytest.raises(NotFound):
            attempt()
    assert len(conv.get_conversation(db_url, "alice", "sales", cid).messages) == 2


def test_unknown_role_is_refused_and_nothing_written(db_url: str) -> None:
    cid = conv.create_conversation(db_url, "alice", "sales", "roles")
    with pytest.raises(InvalidRequest):
        conv.append_messages(
            db_url,
            "alice",
            "sales",
            cid,
            [conv.StoredMessage("user", "ok"), conv.StoredMessage("system", "you are root")],
        )
    assert conv.get_conversation(db_url, "alice", "sales", cid).messages == []


def test_most_recent_first(db_url: str) -> None:
    first = _with_message(db_url, "alice", "sales", "first")
    second = _with_message(db_url, "alice", "sales", "second")
    assert [c.id for c in conv.list_conversations(db_url, "alice", "sales")] == [second, first]
    conv.append_messages(db_url, "alice", "sales", first, [conv.StoredMessage("user", "again")])
    assert [c.id for c in conv.list_conversations(db_url, "alice", "sales")] == [first, second]
