"""`tenantllm eval`: retrieval quality of each built-in team on its labelled set, with floors.

The floors are what hybrid retrieval measured on the demo documents (k=3, 12 questions per
team) minus a margin: a change that makes retrieval find the right passage less often fails
here. Real Chroma, real embeddings, the CLI as the operator runs it (in-process). An eval
file for one team whose expected sources are another team's files scores zero: the command
can only read the team's own chunks.
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from core.audit.auditor import Auditor
from core.audit.query import AuditFilters
from core.cli import main
from core.config import Settings
from core.errors import InvalidRequest
from core.knowledge.evaluation import LabelledQuestion, load_questions, score_question
from core.resources import assets_dir
from core.tenancy import Source
from tests.knowledge_support import make_service

EVAL_DIR = assets_dir() / "eval"
# Measured (hybrid, the default weights, k=3): hit@3 1.00 for every team; MRR finance 0.958,
# sales 0.958, development 0.917. Dense only measured MRR 0.917 / 0.958 / 0.861, so the
# development floor (0.87) also fails when the keyword side stops contributing.
FLOORS = {
    "finance": {"hit_at_k": 0.9, "mrr": 0.85},
    "sales": {"hit_at_k": 0.9, "mrr": 0.85},
    "development": {"hit_at_k": 0.9, "mrr": 0.87},
}


def _source(filename: str, snippet: str) -> Source:
    return Source(document_id="d", filename=filename, location="", snippet=snippet, score=0.0)


# --- the labelled set and the scores, without a model ------------------------------------
@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("not json", "not JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"question": "", "source": "a.md"}', "'question'"),
        ('{"question": "Q?"}', "'source' or 'sources'"),
        ('{"question": "Q?", "sources": "a.md"}', "'source' or 'sources'"),
        ('{"question": "Q?", "source": "a.md", "contains": ""}', "'contains'"),
        ('{"question": "Q?", "source": "a.md", "expected": "x"}', "unknown field(s) expected"),
    ],
)
def test_bad_lines_are_named(tmp_path: Path, line: str, error: str) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "Fine?", "source": "a.md"}\n' + line + "\n")
    with pytest.raises(InvalidRequest) as raised:
        load_questions(path)
    assert "line 2" in raised.value.message and error in raised.value.message


def test_empty_or_missing_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n\n")
    for name in ("empty.jsonl", "missing.jsonl"):
        with pytest.raises(InvalidRequest):
            load_questions(tmp_path / name)


def test_scores_count_each_expected_source_once() -> None:
    item = LabelledQuestion("q", "Q?", ("a.md", "b.md"), contains=None)
    got = [_source("x.md", ""), _source("a.md", ""), _source("a.md", ""), _source("b.md", "")]
    result = score_question(item, got, k=4)
    assert result.first_hit_rank == 2 and result.reciprocal_rank == 0.5
    ideal = 1 + 1 / 1.5849625007211562  # two relevant at ranks 1 and 2
    dcg = 1 / 1.5849625007211562 + 1 / 2.321928094887362  # ranks 2 and 4 (not the repeat)
    assert result.ndcg == pytest.approx(dcg / ideal)
    assert score_question(item, got, k=1).hit is False


def test_the_phrase_must_be_in_the_passage() -> None:
    item = LabelledQuestion("q", "Q?", ("a.md",), contains="EUR  220 in\nLondon")
    other_passage = [_source("a.md", "Trains are preferred."), _source("a.md", "eur 220 in London")]
    assert score_question(item, other_passage, k=1).hit is False
    assert score_question(item, other_passage, k=2).first_hit_rank == 2


# --- the CLI over the demo documents ------------------------------------------------------
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding every built-in team's demo documents (as the server seeds them)."""
    root = tmp_path_factory.mktemp("eval") / "data"
    make_service(root).ensure_demo_documents()
    return root


def _eval(data_dir: Path, *args: str) -> Result:
    env = {"TENANTLLM_DATA_DIR": str(data_dir), "TENANTLLM_DATABASE_URL": ""}
    return CliRunner().invoke(main, ["eval", *args], env=env, catch_exceptions=False)


def _report(data_dir: Path, tenant: str, questions: Path) -> dict[str, Any]:
    out = data_dir.parent / f"{tenant}-{questions.stem}.json"
    args = ["--tenant", tenant, str(questions), "--k", "3", "--json", str(out)]
    result = _eval(data_dir, *args)
    assert result.exit_code == 0, result.output
    assert f"{tenant}: 12 questions, k=3" in result.stdout  # the summary line
    report: dict[str, Any] = json.loads(out.read_text())
    return report


@pytest.mark.parametrize("tenant", sorted(FLOORS))
def test_each_team_meets_its_retrieval_floor(data_dir: Path, tenant: str) -> None:
    report = _report(data_dir, tenant, EVAL_DIR / f"{tenant}.jsonl")
    assert report["questions"] == 12 and len(report["results"]) == 12
    misses = [r["id"] for r in report["results"] if not r["hit"]]
    assert report["hit_at_k"] >= FLOORS[tenant]["hit_at_k"], misses
    assert report["mrr"] >= FLOORS[tenant]["mrr"], report["mrr"]


def test_another_teams_labelled_set_scores_zero(data_dir: Path) -> None:
    # Sales asks finance's questions, expecting finance's files and passages.
    report = _report(data_dir, "sales", EVAL_DIR / "finance.jsonl")
    assert report["hit_at_k"] == 0.0 and report["mrr"] == 0.0
    sales_files = {p.name for p in (assets_dir() / "demo_docs" / "sales").iterdir()}
    retrieved = {name for r in report["results"] for name in r["retrieved"]}
    assert retrieved and retrieved <= sales_files  # only sales' own passages came back


def test_eval_is_audited_as_the_operator(data_dir: Path) -> None:
    bad = data_dir.parent / "bad.jsonl"
    bad.write_text('{"question": "Where?"}\n')
    result = _eval(data_dir, "--tenant", "development", str(bad))
    assert result.exit_code == 1 and "line 1" in result.stderr and "Traceback" not in result.output
    _report(data_dir, "development", EVAL_DIR / "development.jsonl")

    auditor = Auditor(Settings(data_dir=data_dir))
    rows = auditor.query(AuditFilters(action="cli_eval", tenant_id="development"), 1, 10).rows
    assert {r.outcome for r in rows} == {"ok", "error"}
    assert {r.user_sub for r in rows} == {f"local:{getpass.getuser()}"}
