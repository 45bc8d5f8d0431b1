"""`tenantllm eval`: how well a team's retriever finds the right passages, on a labelled set.

Runs as the operator (like the other document commands, core/cli/knowledge.py) and records
one audit event `cli_eval`. The questions go through the team's own retrieval, so the scores
are those of what the team's chat sees (core/knowledge/evaluation.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from core.cli.base import main, user_errors
from core.cli.knowledge import audit_operator, operator_knowledge, tenant_option
from core.errors import TenantLLMError
from core.knowledge.evaluation import EvalReport, evaluate, load_questions


def _table(report: EvalReport) -> list[str]:
    """The per-question table, then the means."""
    lines = [f"{'id':<18} {'rank':>4}  {'nDCG':>5}  question -> top file"]
    for r in report.results:
        rank = str(r.first_hit_rank) if r.first_hit_rank else "-"
        top = r.retrieved[0] if r.retrieved else "(nothing)"
        lines.append(f"{r.id[:18]:<18} {rank:>4}  {r.ndcg:5.2f}  {r.question[:60]} -> {top}")
    weight = "tenant default" if report.keyword_weight is None else str(report.keyword_weight)
    lines.append(
        f"{report.tenant_id}: {report.questions} questions, k={report.k}, keyword weight "
        f"{weight}: hit@{report.k} {report.hit_at_k:.3f}  MRR {report.mrr:.3f}  "
        f"nDCG@{report.k} {report.ndcg_at_k:.3f}"
    )
    return lines


@main.command("eval")
@tenant_option
@click.argument("questions", type=click.Path(path_type=Path))
@click.option("--k", "k", default=5, show_default=True, help="Passages scored per question.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Write a JSON report.")
@click.option(
    "--keyword-weight",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Weight of BM25 against dense retrieval (default: the tenant's, else the setting's).",
)
@user_errors
def eval_command(
    tenant_id: str, questions: Path, k: int, json_out: Path | None, keyword_weight: float | None
) -> None:
    """Score a tenant's retrieval on a JSONL file of labelled questions (hit@k, MRR, nDCG@k).

    Each line: {"question": ..., "source": "<file name>", "contains": "<phrase>"} (see
    assets/eval/ for the built-in tenants' sets). Answers are not checked: that needs the engine.
    """
    started = time.monotonic()
    with operator_knowledge(tenant_id) as (services, tenant):
        try:
            items = load_questions(questions)
            report = evaluate(services.knowledge, tenant, items, k, keyword_weight)
        except TenantLLMError as exc:
            detail = f"{questions.name}: {exc.message}"
            audit_operator(
                services,
                "cli_eval",
                tenant,
                started,
                outcome="error",
                status=exc.status,
                error_class=type(exc).__name__,
                detail=detail,
            )
            raise
        detail = (
            f"{questions.name}: {report.questions} questions, k={k}, hit@k {report.hit_at_k:.3f}, "
            f"MRR {report.mrr:.3f}, nDCG@k {report.ndcg_at_k:.3f}"
        )
        audit_operator(services, "cli_eval", tenant, started, detail=detail)
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    for line in _table(report):
        click.echo(line)
