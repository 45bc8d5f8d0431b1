"""The demo answer-quality set (assets/eval/<tenant>.answers.jsonl) and its scoring (fast).

bench/answer_quality.py measures how often the bundled model states each fact; these tests
keep the set honest: every built-in tenant has one, each fact is written in that tenant's
demo document, and no question gives its own answer away.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.answer_quality import (
    TENANTS,
    is_degenerate,
    load_answer_set,
    normalize,
    states_fact,
)
from core.resources import assets_dir

DEMO_DOCS = assets_dir() / "demo_docs"


def _text(path: Path) -> str:
    # The raw file is enough here: tags and CSV commas never split a fact of this set.
    return normalize(re.sub(r"<[^>]+>", " ", path.read_text()))


@pytest.mark.parametrize("tenant", TENANTS)
def test_each_built_in_tenant_has_a_valid_set(tenant: str) -> None:
    items = load_answer_set(tenant)
    assert 8 <= len(items) <= 12
    assert len({i.id for i in items}) == len(items)
    for item in items:
        document = DEMO_DOCS / tenant / item.source
        assert document.is_file(), item
        # The first phrasing is the document's own words; the others are accepted rewordings.
        assert states_fact(_text(document), item.facts[:1]), item
        assert not states_fact(item.question, item.facts), f"{item.id} gives its answer away"


def test_the_set_ships_with_the_assets() -> None:
    assert {p.name for p in (assets_dir() / "eval").glob("*.answers.jsonl")} == {
        f"{t}.answers.jsonl" for t in TENANTS
    }


def test_a_malformed_line_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.answers.jsonl").write_text(
        '{"id": "a", "question": "q", "facts": [], "source": "f"}\n'
    )
    with pytest.raises(ValueError, match="facts must be a non-empty list"):
        load_answer_set("x", tmp_path)


@pytest.mark.parametrize(
    ("answer", "facts", "stated"),
    [
        ("The Team plan costs EUR 199 per month.", ["199"], True),
        ("It costs EUR 1990.", ["199"], False),  # a whole number, not digits inside another
        ("A three-year contract gets 12 % off.", ["12%"], True),
        ("12 percent off", ["12%"], True),
        ("at least EUR 2,400 a year", ["2400"], True),
        ("10.5% of traffic", ["0.5%"], False),
        ("Deploys stop at 14:00 CET.", ["14:00"], True),
        ("It takes about Two Minutes.", ["two minutes", "2 minutes"], True),
        ("I do not know.", ["CFO"], False),
    ],
)
def test_states_fact(answer: str, facts: list[str], stated: bool) -> None:
    assert states_fact(answer, facts) is stated


def test_a_looping_answer_is_degenerate() -> None:
    assert is_degenerate("Sales to: [5] Sales to: [6] Sales to: [7] Sales to: [8]")
    assert not is_degenerate("The Team plan costs EUR 199 per month, billed annually.")


def test_the_demo_notice_is_for_the_bundled_model_only(tmp_path: Path) -> None:
    from core.config import Settings
    from core.engine.model import serves_bundled_model

    def settings(**kw: str) -> Settings:
        return Settings(data_dir=tmp_path, **kw)  # type: ignore[arg-type]

    assert serves_bundled_model(settings())  # the default: `bundled`
    assert serves_bundled_model(settings(model=str(tmp_path / "models/SmolLM2-135M-Instruct")))
    assert not serves_bundled_model(settings(model="/models/Qwen2.5-7B-Instruct"))
    assert not serves_bundled_model(
        settings(engine_backend="openai", engine_url="http://gpu:8000", model="bundled")
    )
