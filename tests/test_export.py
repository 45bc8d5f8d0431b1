"""Exporting a conversation: Markdown and JSON with its sources and ratings, for its owner only.

The owner check is `get_conversation` (owner AND team), run before anything is rendered; the
Gradio event is tested against the real app in tests/test_feedback_ui.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.chat import conversations as conv
from core.chat import feedback
from core.chat.export import export_filename, parse_format, render_export
from core.errors import InvalidRequest, NotFound
from tests.audit_helpers import fresh_database
from tests.test_feedback import answer_ids, conversation, source


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path) as url:
        yield url


def _opened(url: str, owner: str, team: str, cid: str) -> tuple[conv.Conversation, dict]:
    return conv.get_conversation(url, owner, team, cid), feedback.ratings_of(url, owner, team, cid)


def test_json_export_has_messages_sources_and_ratings(db_url: str) -> None:
    cid = conversation(db_url, "alice", "sales", [source("d1", "pricing.md", "page 3")], [])
    first, _ = answer_ids(db_url, "alice", "sales", cid)
    feedback.rate_answer(db_url, "alice", "sales", cid, first, "down")
    feedback.comment_answer(db_url, "alice", "sales", cid, first, "old prices")
    found, ratings = _opened(db_url, "alice", "sales", cid)
    data = json.loads(render_export(found, "json", ratings))
    assert data["id"] == cid and data["team"] == "sales"
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"] * 2
    answer = data["messages"][1]
    assert answer["content"] == "answer 0"
    assert answer["sources"][0]["filename"] == "pricing.md"
    assert answer["sources"][0]["location"] == "page 3"
    assert (answer["rating"], answer["comment"]) == ("down", "old prices")
    assert data["messages"][3]["sources"] == [] and data["messages"][3]["rating"] is None
    assert all(m["time"] for m in data["messages"])


def test_markdown_export_reads_as_a_document(db_url: str) -> None:
    sources = [source("d1", "pricing.md", "page 3"), source("d2", "faq\nnotes.md")]
    cid = conversation(db_url, "alice", "sales", sources)
    [mid] = answer_ids(db_url, "alice", "sales", cid)
    feedback.rate_answer(db_url, "alice", "sales", cid, mid, "up")
    found, ratings = _opened(db_url, "alice", "sales", cid)
    text = render_export(found, "markdown", ratings)
    assert text.startswith("# chat\n")
    assert "## You\n\nquestion 0" in text and "## Assistant\n\nanswer 0" in text
    assert "1. pricing.md (page 3)" in text
    assert "2. faq notes.md (page 1)" in text  # a newline in a name cannot break the list
    assert "Rated: thumbs up" in text


def test_another_user_or_team_gets_nothing(db_url: str) -> None:
    cid = conversation(db_url, "alice", "sales", [source("d1", "secret-plan.md")])
    for owner, team in (("bob", "sales"), ("alice", "finance"), ("carol", "finance")):
        with pytest.raises(NotFound):
            conv.get_conversation(db_url, owner, team, cid)
        assert feedback.ratings_of(db_url, owner, team, cid) == {}


def test_file_names_and_formats() -> None:
    found = conv.Conversation("id", "../../etc/passwd Q3: plan?", "sales", [])
    assert export_filename(found, "markdown") == "etc-passwd-Q3-plan.md"
    assert export_filename(conv.Conversation("id", "///", "sales", []), "json") == (
        "conversation.json"
    )
    assert parse_format("json") == "json"
    with pytest.raises(InvalidRequest):
        parse_format("pdf")
