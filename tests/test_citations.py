"""Citations a person can check (issue 18, item 6): real parsers, real Chroma, real embeddings.

A source opens the passage it cites in its document: the PDF's page, the Markdown or HTML
section, the CSV's row block, with the cited chunk marked and the question's words
highlighted; for the team's own documents only (team B asking for team A's document or chunk
gets NotFound and nothing of it).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.errors import NotFound
from core.knowledge.passages import NOT_FOUND, cited_passage
from core.knowledge.service import KnowledgeService
from core.tenancy import Source
from tests.knowledge_support import make_pdf, make_service, write

PAGES = [[f"Page {p} line {i}: the heron{p} flies south for the winter." for i in range(25)]
         for p in range(1, 4)]  # fmt: skip
MARKDOWN = (
    "# Intro\n\nHello there.\n\n## Pricing\n\n"
    + "".join(f"The price of gold on day {n} is high. " for n in range(60))
    + "\n\n## Other\n\nGoodbye.\n"
)  # fmt: skip
CSV = "city,cost\n" + "".join(f"town{n},{n * 10}\n" for n in range(1, 61))


@pytest.fixture(scope="module")
def knowledge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnowledgeService]:
    """One service for the module: sales holds a PDF, a Markdown file, a CSV, an HTML page."""
    folder = tmp_path_factory.mktemp("citations")
    service = make_service(folder, chunk_size=64, chunk_overlap=8)
    files = [
        write(folder, "birds.pdf", make_pdf(PAGES)),
        write(folder, "notes.md", MARKDOWN),
        write(folder, "costs.csv", CSV),
        write(folder, "page.html", "<h1>Start</h1><p>Intro.</p><h2>Ospreys</h2>"
              "<p>Ospreys dive feet first for fish.</p><h2>End</h2><p>Fin.</p>"),
    ]  # fmt: skip
    outcomes = service.ingest(service.tenants.get("sales"), files, "ann")
    assert [o.status for o in outcomes] == ["indexed"] * 4, outcomes
    yield service


def _source(knowledge: KnowledgeService, query: str, filename: str) -> Source:
    found = knowledge.retrieve(knowledge.tenants.get("sales"), query, top_k=8)
    return next(s for s in found if s.filename == filename)


def _passage(knowledge: KnowledgeService, tenant_id: str, source: Source) -> object:
    return cited_passage(
        knowledge.tenants.get(tenant_id), knowledge.vector_store(knowledge.tenants.get(tenant_id)),
        knowledge.settings.resolved_database_url, source.document_id, source.location,
        source.snippet,
    )  # fmt: skip


def test_a_pdf_source_opens_its_whole_page(knowledge) -> None:
    source = _source(knowledge, "heron2 flies south", "birds.pdf")
    assert source.location == "page 2"
    passage = _passage(knowledge, "sales", source)
    # The whole page, each line once (the chunks' overlaps dropped), and no other page.
    for i in range(25):
        assert passage.text.count(f"Page 2 line {i}:") == 1, i  # type: ignore[attr-defined]
    assert "heron1" not in passage.text and "heron3" not in passage.text  # type: ignore[attr-defined]
    start, end = passage.cited_start, passage.cited_end  # type: ignore[attr-defined]
    assert passage.text[start:end] == source.snippet  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("query", "filename", "location", "inside", "outside"),
    [
        ("price of gold", "notes.md", "section: Pricing", "The price of gold", "Goodbye"),
        ("town42 cost", "costs.csv", "rows 27-51", "town42, 420", "town60"),
        ("ospreys dive for fish", "page.html", "section: Ospreys", "feet first", "Fin."),
    ],
)
def test_sections_and_row_ranges_open_as_cited(
    knowledge, query: str, filename: str, location: str, inside: str, outside: str
) -> None:
    source = _source(knowledge, query, filename)
    assert source.location == location
    passage = _passage(knowledge, "sales", source)
    assert inside in passage.text and outside not in passage.text  # type: ignore[attr-defined]
    if filename == "notes.md":  # the long section is whole: 60 sentences, none twice
        for n in range(60):
            assert passage.text.count(f"on day {n} is high.") == 1, n  # type: ignore[attr-defined]


def test_another_team_gets_nothing_of_the_document(knowledge) -> None:
    source = _source(knowledge, "heron2 flies south", "birds.pdf")
    with pytest.raises(NotFound) as refused:
        _passage(knowledge, "finance", source)
    assert refused.value.message == NOT_FOUND
    assert "birds" not in refused.value.message and "heron" not in refused.value.message
    # Another location or a made-up chunk of the team's own document: nothing either.
    with pytest.raises(NotFound):
        cited_passage(
            knowledge.tenants.get("sales"), knowledge.vector_store(knowledge.tenants.get("sales")),
            knowledge.settings.resolved_database_url, source.document_id, "page 99", "x",
        )  # fmt: skip


def test_highlighting_marks_the_question_words_and_escapes_the_text(tmp_path: Path) -> None:
    from core.knowledge.passages import Passage
    from core.ui.citations import passage_html

    text = "Before. <img src=x onerror=alert(1)> The Heron flies south. After herons."
    start = text.index("The Heron")
    passage = Passage("d", "a<b>.pdf", "page 1", text, start, start + 23, True, False)
    shown = passage_html(passage, "Where does the heron fly?")
    assert "<img" not in shown and "&lt;img src=x" in shown
    assert "<mark>Heron</mark>" in shown and "the</mark>" not in shown
    assert "<blockquote>" in shown and "a&lt;b&gt;.pdf" in shown


# --- the real app and a real browser ---------------------------------------------------------
@pytest.mark.browser
@pytest.mark.engine
def test_browser_source_opens_its_page_with_the_words_marked(
    new_context: Any, app_server: Any, tmp_path: Path
) -> None:
    from tests.fixtures.browser import screenshot, sign_in
    from tests.ui_helpers import make_user

    tag = uuid.uuid4().hex[:6]
    pages = [[f"Chapter {p}: general remarks about office life, line {i}." for i in range(12)]
             for p in range(1, 3)]  # fmt: skip
    pages.append([f"The {tag} pelican budget is 8 million euros for line {i}." for i in range(12)])
    doc = write(tmp_path, f"pelican-{tag}.pdf", make_pdf(pages))
    page = new_context().new_page()
    sign_in(page, app_server.base_url, make_user(app_server.issuer, ["sales-editors"]))
    page.get_by_role("tab", name="Documents").click()
    page.locator("#docs-upload input[type=file]").set_input_files([str(doc)])
    page.locator("#docs-upload-btn").click()
    page.locator("#docs-table").get_by_text(doc.name).first.wait_for(timeout=300_000)
    page.get_by_role("tab", name="Chat").click()
    page.locator("#chat-input textarea").fill(f"What is the {tag} pelican budget?")
    page.locator("#chat-input textarea").press("Enter")
    page.locator("#chatbot").get_by_text("Sources (").last.wait_for(timeout=240_000)
    page.wait_for_function(
        "() => document.querySelector('#chatbot [data-testid=block-label]')"
        ".innerText.trim() === 'Assistant'",
        timeout=240_000,
    )
    page.locator("#source-check").get_by_text("Check a source").click()
    page.locator("#source-pick input").click()
    page.get_by_role("option", name=re.compile(re.escape(doc.name) + r" · page 3")).first.click()
    shown = page.locator("#source-passage-text")
    shown.wait_for(timeout=60_000)
    text = shown.inner_text()
    assert f"{doc.name} · page 3" in text and "line 11" in text and "Chapter 1" not in text, text
    marked = page.locator("#source-passage-text mark").all_inner_texts()
    assert {m.lower() for m in marked} >= {tag, "pelican", "budget"}, marked
    page.locator("#source-passage").scroll_into_view_if_needed()
    screenshot(page, "citation-passage")
