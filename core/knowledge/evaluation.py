"""Retrieval evaluation: labelled questions -> hit@k, MRR and nDCG@k for a team's retriever.

A labelled set is JSON Lines, one question per line:

    {"question": "...", "source": "expense_policy.md", "contains": "EUR 220 in London"}

`source` (or `sources`, a list) names the file(s) that hold the answer, by the file name the
team's documents are listed under; `contains`, if given, is a phrase the passage itself must
hold (compared case- and whitespace-insensitively), which makes the check passage-level, not
only file-level. `id` is optional. `answer` may be given but is not checked: an answer check
needs the engine, and this harness measures retrieval only.

Relevance is binary and per expected source: the first retrieved passage that matches an
expected source counts, later passages of the same source do not (so nDCG's ideal is
`min(len(sources), k)` hits at the top). Every question goes through
`KnowledgeService.retrieve`, so it sees exactly what the team's chat sees: its own indexes
and nothing else.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import InvalidRequest
from core.tenancy import Source, Tenant

if TYPE_CHECKING:
    from core.knowledge.service import KnowledgeService

_KEYS = {"id", "question", "source", "sources", "contains", "answer"}


@dataclass(frozen=True)
class LabelledQuestion:
    """One line of a labelled set."""

    id: str
    question: str
    sources: tuple[str, ...]
    contains: str | None = None


@dataclass(frozen=True)
class QuestionResult:
    """How the retriever did on one question."""

    id: str
    question: str
    expected: tuple[str, ...]
    retrieved: tuple[str, ...]  # file names of the passages returned, best first
    first_hit_rank: int | None  # 1-based rank of the first relevant passage
    hit: bool
    reciprocal_rank: float
    ndcg: float


@dataclass
class EvalReport:
    """A labelled set's results: the means and one row per question."""

    tenant_id: str
    k: int
    keyword_weight: float | None
    questions: int
    hit_at_k: float
    mrr: float
    ndcg_at_k: float
    results: list[QuestionResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return asdict(self)


def load_questions(path: Path) -> list[LabelledQuestion]:
    """The labelled questions of a JSONL file; InvalidRequest naming the line at fault."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"{path}: the questions file could not be read ({exc}).") from exc
    questions = [
        _parse_line(path, number, line)
        for number, line in enumerate(lines, start=1)
        if line.strip()
    ]
    if not questions:
        raise InvalidRequest(f"{path}: no questions (one JSON object per line).")
    return questions


def _parse_line(path: Path, number: int, line: str) -> LabelledQuestion:
    where = f"{path.name} line {number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"{where}: not JSON ({exc.msg}).") from exc
    if not isinstance(record, dict):
        raise InvalidRequest(f"{where}: expected a JSON object.")
    unknown = sorted(set(record) - _KEYS)
    if unknown:
        raise InvalidRequest(f"{where}: unknown field(s) {', '.join(unknown)}.")
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise InvalidRequest(f"{where}: 'question' must be a non-empty string.")
    sources = record.get("sources", [record["source"]] if "source" in record else [])
    if (
        not isinstance(sources, list)
        or not sources
        or not all(isinstance(s, str) and s.strip() for s in sources)
    ):
        raise InvalidRequest(f"{where}: give the expected file as 'source' or 'sources'.")
    contains = record.get("contains")
    if contains is not None and (not isinstance(contains, str) or not contains.strip()):
        raise InvalidRequest(f"{where}: 'contains' must be a non-empty string.")
    return LabelledQuestion(
        id=str(record.get("id", number)),
        question=question,
        sources=tuple(sources),
        contains=contains,
    )


def _normal(text: str) -> str:
    return " ".join(text.casefold().split())


def score_question(item: LabelledQuestion, retrieved: Sequence[Source], k: int) -> QuestionResult:
    """hit@k, reciprocal rank and nDCG@k of one question's retrieved passages."""
    phrase = _normal(item.contains) if item.contains else None
    remaining = set(item.sources)
    gains: list[int] = []
    for source in retrieved[:k]:
        relevant = source.filename in remaining and (
            phrase is None or phrase in _normal(source.snippet)
        )
        if relevant:
            remaining.discard(source.filename)  # each expected source counts once
        gains.append(int(relevant))
    first = next((rank for rank, gain in enumerate(gains, start=1) if gain), None)
    dcg = sum(gain / math.log2(rank + 1) for rank, gain in enumerate(gains, start=1))
    ideal = sum(1 / math.log2(rank + 1) for rank in range(1, min(len(item.sources), k) + 1))
    return QuestionResult(
        id=item.id,
        question=item.question,
        expected=item.sources,
        retrieved=tuple(s.filename for s in retrieved[:k]),
        first_hit_rank=first,
        hit=first is not None,
        reciprocal_rank=1.0 / first if first else 0.0,
        ndcg=dcg / ideal if ideal else 0.0,
    )


def evaluate(
    knowledge: KnowledgeService,
    tenant: Tenant,
    questions: Sequence[LabelledQuestion],
    k: int,
    keyword_weight: float | None = None,
) -> EvalReport:
    """Run every question through the team's retriever and score the top `k` passages."""
    if not 1 <= k <= 50:
        raise InvalidRequest(f"k must be between 1 and 50, not {k}.")
    results = [
        score_question(
            item, knowledge.retrieve(tenant, item.question, k, keyword_weight=keyword_weight), k
        )
        for item in questions
    ]
    count = len(results)
    return EvalReport(
        tenant_id=tenant.id,
        k=k,
        keyword_weight=keyword_weight,
        questions=count,
        hit_at_k=sum(r.hit for r in results) / count,
        mrr=sum(r.reciprocal_rank for r in results) / count,
        ndcg_at_k=sum(r.ndcg for r in results) / count,
        results=results,
    )
