"""Thumbs, comments and exports through the real app: real sign-in, real Gradio events.

The page only says which message was clicked; the handler reads the rest from the database
for the signed-in user. Another user of the same team and a user of another team get
nothing: not the conversation, not its export, not the exported file's URL. The browser test
(real Chromium, real engine) rates an answer, comments, exports both formats and takes
screenshots under test-artifacts/screenshots/.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from core.audit.query import AuditFilters
from core.chat import conversations as conv
from core.chat import feedback
from tests.fixtures.browser import screenshot, sign_in
from tests.security.test_output_scoping import GradioSession, final_data
from tests.ui_helpers import app_db_url, make_user, signed_in_client, wait_for_audit

DISLIKE = {"index": 1, "value": ["answer"], "liked": False}


def _rated_world(app_server: Any) -> dict[str, str]:
    """A sales user's conversation with one answer citing a document; two outsiders."""
    db = app_db_url(app_server.data_dir)
    canary = f"exportcanary{uuid.uuid4().hex[:8]}"
    users = {
        "owner": make_user(app_server.issuer, ["sales"], prefix="owner"),
        "teammate": make_user(app_server.issuer, ["sales"], prefix="mate"),
        "outsider": make_user(app_server.issuer, ["finance"], prefix="fin"),
    }
    cid = conv.create_conversation(db, users["owner"], "sales", f"{canary} chat")
    cited = {"document_id": f"{canary}-doc", "filename": f"{canary}.md", "location": "page 2",
             "snippet": f"{canary} snippet", "score": 0.9}  # fmt: skip
    conv.append_messages(
        db,
        users["owner"],
        "sales",
        cid,
        [conv.StoredMessage("user", "Q?"), conv.StoredMessage("assistant", "A.", [cited])],
    )
    return {"db": db, "canary": canary, "cid": cid, **users}


def _session(app_server: Any, sub: str) -> Any:
    return signed_in_client(app_server.base_url, sub)


def test_rating_is_stored_and_audited_with_the_cited_documents(app_server) -> None:
    w = _rated_world(app_server)
    with _session(app_server, w["owner"]) as client:
        s = GradioSession(client)
        s.ok("load", [])
        s.ok("switch", ["sales"])
        s.ok("conversation_open", [w["cid"], "sales"])
        s.ok("chat_feedback", [None, "sales"], DISLIKE)
        s.ok("chat_feedback_comment", [None, "sales", None, "cites the wrong page"])
        # A position that is no answer (the question) is refused, and changes nothing.
        refused = s.call("chat_feedback", [None, "sales"], {**DISLIKE, "index": 0})
    assert refused[-1]["success"] is False
    ratings = feedback.ratings_of(w["db"], w["owner"], "sales", w["cid"])
    assert list(ratings.values()) == [("down", "cites the wrong page")]
    rows = wait_for_audit(w["db"], AuditFilters(user=w["owner"], action="feedback"), minimum=2)
    assert {r.tenant_id for r in rows} == {"sales"}
    assert all(r.document_ids == [f"{w['canary']}-doc"] for r in rows)
    assert any(f"{w['canary']}-doc@page 2" in (r.detail or "") for r in rows)
    assert "rating:down" in rows[-1].flags


def test_export_is_for_the_owner_only(app_server) -> None:
    w = _rated_world(app_server)
    with _session(app_server, w["owner"]) as client:
        s = GradioSession(client)
        s.ok("load", [])
        s.ok("switch", ["sales"])
        s.ok("conversation_open", [w["cid"], "sales"])
        update = final_data(s.ok("conversation_export", [None, "sales", "json"]))[0]
        url = update["value"]["url"]
        exported = json.loads(client.get(url).text)
        markdown = final_data(s.ok("conversation_export", [None, "sales", "markdown"]))[0]
        text = client.get(markdown["value"]["url"]).text
    assert exported["id"] == w["cid"]
    assert exported["messages"][1]["sources"][0]["filename"] == f"{w['canary']}.md"
    assert f"1. {w['canary']}.md (page 2)" in text
    for who, team in (("teammate", "sales"), ("outsider", "finance")):
        with _session(app_server, w[who]) as client:
            s = GradioSession(client)
            s.ok("load", [])
            s.ok("switch", [team])
            opened = s.call("conversation_open", [w["cid"], team])
            asked = s.call("conversation_export", [None, team, "json"])
            crossed = s.call("conversation_export", [None, "sales", "json"])
            fetched = client.get(url)
        for out in (opened, asked, crossed):
            assert out[-1]["success"] is False, out[-1]
            assert w["canary"] not in json.dumps(out)
        assert fetched.status_code in (403, 404) and w["canary"] not in fetched.text
    audited = wait_for_audit(w["db"], AuditFilters(user=w["owner"], action="conversation_export"))
    assert audited and audited[0].tenant_id == "sales"


ANSWER_TIMEOUT = 240_000


@pytest.mark.browser
@pytest.mark.engine
def test_browser_thumbs_comment_and_export(new_context, app_server, tmp_path: Path) -> None:
    sub = make_user(app_server.issuer, ["sales"], prefix="thumbs")
    page = new_context().new_page()
    sign_in(page, app_server.base_url, sub)
    page.locator("#chat-input textarea").fill("What does the sales playbook say about discounts?")
    page.locator("#chat-input textarea").press("Enter")
    page.locator("#chatbot").get_by_text("Sources (").last.wait_for(timeout=ANSWER_TIMEOUT)
    page.wait_for_function(
        "() => document.querySelector('#chatbot [data-testid=block-label]').innerText.trim()"
        " === 'Assistant'",
        timeout=ANSWER_TIMEOUT,
    )
    page.locator("#chatbot button[aria-label='Dislike']").last.click()
    page.locator("#feedback-comment textarea").wait_for(state="visible")
    page.locator("#feedback-comment textarea").fill("The discount table is out of date.")
    screenshot(page, "feedback-thumbs-down")
    page.locator("#feedback-send").click()
    page.locator("#feedback-row").wait_for(state="hidden")
    db = app_db_url(app_server.data_dir)
    [summary] = conv.list_conversations(db, sub, "sales")
    ratings = feedback.ratings_of(db, sub, "sales", summary.id)
    assert list(ratings.values()) == [("down", "The discount table is out of date.")]
    page.locator("#conv-export").click()
    for label, suffix in (("JSON", ".json"), ("Markdown", ".md")):
        page.locator("#conv-export-format").get_by_text(label).click()
        page.locator("#conv-export-btn").click()
        # Gradio's file row: the name (stem and extension apart), then a download link.
        page.locator("#conv-file td.filename .ext").filter(has_text=suffix).wait_for()
        with page.expect_download() as download:
            page.locator("#conv-file td.download a").click()
        saved = tmp_path / download.value.suggested_filename
        download.value.save_as(saved)
        content = saved.read_text()
        assert "The discount table is out of date." in content
        assert "Sources" in content or '"sources"' in content
    screenshot(page, "feedback-export", full_page=True)
