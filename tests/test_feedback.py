"""Feedback on answers: only the conversation's owner rates, per team, tied to what was cited.

Runs on SQLite and on the real PostgreSQL (a throw-away database per test), through the real
migration chain. The Gradio events themselves are tested against the real app in
tests/test_feedback_ui.py and tests/security/test_output_scoping.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from core.chat import conversations as conv
from core.chat import feedback
from core.errors import InvalidRequest, NotFound
from core.ui.chat_tab import to_chat_messages
from core.ui.feedback import _liked, answer_at
from tests.audit_helpers import fresh_database

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path) as url:
        yield url


def source(doc: str, name: str, where: str = "page 1") -> dict[str, object]:
    return {"document_id": doc, "filename": name, "location": where, "snippet": "s", "score": 1.0}


def conversation(url: str, owner: str, team: str, *answers: list[dict[str, object]]) -> str:
    """A conversation of `owner` in `team`: one question and answer per sources list."""
    cid = conv.create_conversation(url, owner, team, "chat")
    for n, sources in enumerate(answers):
        conv.append_messages(
            url,
            owner,
            team,
            cid,
            [
                conv.StoredMessage("user", f"question {n}"),
                conv.StoredMessage("assistant", f"answer {n}", sources),
            ],
        )
    return cid


def answer_ids(url: str, owner: str, team: str, cid: str) -> list[int]:
    found = conv.get_conversation(url, owner, team, cid)
    return [m.id for m in found.messages if m.role == "assistant" and m.id is not None]


def test_rate_comment_change_and_clear(db_url: str) -> None:
    cid = conversation(db_url, "alice", "sales", [source("d1", "a.md"), source("d2", "b.md")])
    [mid] = answer_ids(db_url, "alice", "sales", cid)
    rated = feedback.rate_answer(db_url, "alice", "sales", cid, mid, "down")
    assert rated.rating == "down"
    assert rated.document_ids == ["d1", "d2"]
    assert rated.chunk_refs() == ["d1@page 1", "d2@page 1"]
    commented = feedback.comment_answer(db_url, "alice", "sales", cid, mid, "  wrong year  ")
    assert commented.comment == "wrong year"
    assert feedback.ratings_of(db_url, "alice", "sales", cid) == {mid: ("down", "wrong year")}
    # A new rating replaces the old one and its comment (the comment was about that rating).
    feedback.rate_answer(db_url, "alice", "sales", cid, mid, "up")
    assert feedback.ratings_of(db_url, "alice", "sales", cid) == {mid: ("up", None)}
    feedback.rate_answer(db_url, "alice", "sales", cid, mid, None)
    assert feedback.ratings_of(db_url, "alice", "sales", cid) == {}


def test_only_the_owner_in_the_team_may_rate(db_url: str) -> None:
    cid = conversation(db_url, "alice", "sales", [source("d1", "a.md")])
    [mid] = answer_ids(db_url, "alice", "sales", cid)
    # Another user of the same team, the owner in another team, another team's user.
    for owner, team in (("bob", "sales"), ("alice", "finance"), ("carol", "finance")):
        with pytest.raises(NotFound):
            feedback.rate_answer(db_url, owner, team, cid, mid, "down")
        with pytest.raises(NotFound):
            feedback.comment_answer(db_url, owner, team, cid, mid, "x")
        assert feedback.ratings_of(db_url, owner, team, cid) == {}
    # A message id of another conversation is not reachable through the caller's own.
    other = conversation(db_url, "bob", "sales", [source("d9", "z.md")])
    [bobs] = answer_ids(db_url, "bob", "sales", other)
    with pytest.raises(NotFound):
        feedback.rate_answer(db_url, "alice", "sales", cid, bobs, "down")
    assert feedback.ratings_of(db_url, "bob", "sales", other) == {}
    assert feedback.document_feedback(db_url, "sales") == []


def test_bad_input_is_refused_and_writes_nothing(db_url: str) -> None:
    cid = conversation(db_url, "alice", "sales", [source("d1", "a.md")])
    [mid] = answer_ids(db_url, "alice", "sales", cid)
    question_id = mid - 1  # the question before it: not an answer
    with pytest.raises(NotFound):
        feedback.rate_answer(db_url, "alice", "sales", cid, question_id, "up")
    with pytest.raises(InvalidRequest):
        feedback.comment_answer(db_url, "alice", "sales", cid, mid, "not rated yet")
    feedback.rate_answer(db_url, "alice", "sales", cid, mid, "up")
    with pytest.raises(InvalidRequest):
        feedback.comment_answer(db_url, "alice", "sales", cid, mid, "   ")
    with pytest.raises(InvalidRequest):
        feedback.parse_rating("meh")
    assert feedback.ratings_of(db_url, "alice", "sales", cid) == {mid: ("up", None)}


def test_document_feedback_counts_per_document_of_one_team(db_url: str) -> None:
    a, b = source("d1", "pricing.md"), source("d2", "faq.md")
    cid = conversation(db_url, "alice", "sales", [a, b], [a], [b], [])
    ids = answer_ids(db_url, "alice", "sales", cid)
    for mid, rating in zip(ids, ("down", "down", "up", "down"), strict=True):
        feedback.rate_answer(db_url, "alice", "sales", cid, mid, rating)
    fin = conversation(db_url, "carol", "finance", [source("f1", "ledger.md")])
    [fin_mid] = answer_ids(db_url, "carol", "finance", fin)
    feedback.rate_answer(db_url, "carol", "finance", fin, fin_mid, "down")
    stats = {s.filename: (s.rated, s.down) for s in feedback.document_feedback(db_url, "sales")}
    # pricing: cited by two rated answers, both down; faq: by two, one down. Never ledger.
    assert stats == {"pricing.md": (2, 2), "faq.md": (2, 1)}
    assert [s.filename for s in feedback.document_feedback(db_url, "finance")] == ["ledger.md"]


def test_deleting_a_conversation_deletes_its_ratings(db_url: str) -> None:
    cid = conversation(db_url, "alice", "sales", [source("d1", "a.md")])
    [mid] = answer_ids(db_url, "alice", "sales", cid)
    feedback.rate_answer(db_url, "alice", "sales", cid, mid, "down")
    conv.delete_conversation(db_url, "alice", "sales", cid)
    assert feedback.document_feedback(db_url, "sales") == []


def test_answer_at_is_the_inverse_of_the_chatbot_layout() -> None:
    messages = [
        conv.StoredMessage("user", "q1", [], 1),
        conv.StoredMessage("assistant", "a1", [], 2),
        conv.StoredMessage("user", "q2", [], 3),
        conv.StoredMessage("assistant", "a2", [], 4),
    ]
    shown = to_chat_messages(messages)
    owners = [answer_at(messages, i) for i in range(len(shown))]
    assert [m.id if m else None for m in owners] == [None, 2, 2, None, 4, 4]
    assert answer_at(messages, len(shown)) is None  # the answer still streaming
    assert answer_at(messages, -1) is None


def test_like_data_from_the_page() -> None:
    assert _liked(SimpleNamespace(liked=True)) == "up"
    assert _liked(SimpleNamespace(liked=False)) == "down"
    assert _liked(SimpleNamespace(liked="")) is None  # the thumb clicked again
    with pytest.raises(InvalidRequest):
        _liked(SimpleNamespace(liked="Flag"))
