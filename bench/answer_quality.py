"""Benchmark: how often the bundled model's answer states the fact, over the demo documents.

The set: `assets/eval/<tenant>.answers.jsonl`, one question per line with the fact a right
answer states (`facts`: accepted phrasings, the first as the document words it) and the
demo document it comes from. An answer states the fact when one phrasing appears in it as a
whole token sequence, after the same normalisation of both (case, blanks, `12 %` = `12%`,
`2,400` = `2400`): a check anyone can rerun, no judge model.

Everything but the sampling goes through the product: the three built-in tenants (plugins),
their demo documents ingested by `KnowledgeService` (parse, chunk, embed, Chroma, BM25),
hybrid retrieval with each variant's `top_k`, the prompt fitted by `chat.prompt.fit_prompt`
with the engine's token count; then the product engine's own `AsyncLLM` generates with the
variant's temperature and penalties (set on vLLM's `SamplingParams` directly: the product's
`GenerationParams` has no repetition penalty).

The variants: the old defaults (each tenant's template, top_k 4, temperature 0.7, no
repetition control), then one factor at a time from greedy decoding: prompt layout, top_k,
repetition penalty, temperature; `new defaults` is what the built-in tenants now declare.
Sampled variants answer each question 3 times; every row is the share over all its answers.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import REPO, BenchContext, BenchResult, Table, target

SET_DIR = REPO / "assets" / "eval"
TENANTS = ("sales", "development", "finance")
MAX_TOKENS = 160  # a fact not stated in 160 tokens is not an answer worth reading
# Sampled variants answer every question this many times. Unseeded: on vLLM's CPU backend a
# seeded request whose sampled token is discarded (its prompt prefilled in chunks) kills the
# engine ("CPU Generator does not use offset", gpu_model_runner._bookkeeping_sync rewinds a
# CUDA Philox offset; the same bug: RBLN-SW/vllm-rbln#1025).
SAMPLED_RUNS = 3


@dataclass(frozen=True)
class AnswerItem:
    """One question of the answer-quality set and the fact a right answer states."""

    id: str
    tenant: str
    question: str
    facts: tuple[str, ...]
    source: str


def load_answer_set(tenant: str, set_dir: Path = SET_DIR) -> list[AnswerItem]:
    """The questions of `<set_dir>/<tenant>.answers.jsonl` (ValueError on a malformed line)."""
    items = []
    path = set_dir / f"{tenant}.answers.jsonl"
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        facts = row.get("facts")
        if not isinstance(facts, list) or not facts or not all(isinstance(f, str) for f in facts):
            raise ValueError(f"{path.name}:{number}: facts must be a non-empty list of text")
        items.append(AnswerItem(row["id"], tenant, row["question"], tuple(facts), row["source"]))
    return items


def normalize(text: str) -> str:
    """Lowercase, one blank between words, `12 %`/`12 percent` -> `12%`, `2,400` -> `2400`."""
    text = re.sub(r"\s+", " ", text.lower())
    text = re.sub(r"(\d) ?(%|percent\b)", r"\1%", text)
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)


def states_fact(answer: str, facts: Sequence[str]) -> bool:
    """Whether one phrasing of the fact appears in `answer` as whole tokens (`100` is not in
    `1000`, `0.5%` is not in `10.5%`)."""
    text = normalize(answer)
    return any(
        re.search(r"(?<![\w.])" + re.escape(normalize(f)) + r"(?![\w])", text) for f in facts
    )


def is_degenerate(answer: str, n: int = 3, times: int = 3) -> bool:
    """A loop: some run of `n` words comes back `times` times or more, digits aside ("Sales
    to: [5] Sales to: [6] ...")."""
    words = re.sub(r"\d+", "0", answer).split()
    grams = [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
    return any(grams.count(g) >= times for g in set(grams))


# --- variants -------------------------------------------------------------------------------
#: Prompt layouts besides each tenant's own: (system, user, source) templates.
LAYOUTS: dict[str, tuple[str, str, str]] = {
    # The sources as bare text: no "[n] file (location):" headers for the model to copy.
    "plain": (
        "You are the assistant of the {tenant_name} team. Answer from the documents.",
        "Documents:\n{context}\n\nQuestion: {question}\n"
        "Answer in one sentence with the exact figure or name from the documents.",
        "{snippet}",
    ),
    # The question before the documents and again after them (the model reads left to right).
    "question-twice": (
        "You are the assistant of the {tenant_name} team. Answer from the documents.",
        "Question: {question}\n\nDocuments:\n{context}\n\n"
        "Using only the documents, answer in one sentence: {question}",
        "{snippet}",
    ),
}


@dataclass(frozen=True)
class Variant:
    """One way of answering: layout ("tenant" = each tenant's template), top_k, sampling."""

    name: str
    layout: str = "tenant"
    top_k: int = 4
    temperature: float = 0.0
    repetition_penalty: float = 1.0
    runs: int = 1
    frequency_penalty: float = 0.0


@dataclass
class Outcome:
    """The answers of one variant: which stated the fact, which looped."""

    variant: Variant
    stated: list[bool] = field(default_factory=list)
    degenerate: list[bool] = field(default_factory=list)
    by_tenant: dict[str, list[bool]] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Share of answers stating the fact."""
        return sum(self.stated) / len(self.stated) if self.stated else float("nan")


def old_defaults() -> Variant:
    """What a built-in tenant did before this benchmark: its template, the setting's top_k
    (4), the chat turn's temperature 0.7, no repetition control."""
    return Variant("old defaults", "tenant", 4, 0.7, 1.0, SAMPLED_RUNS)


def new_defaults(tenants: Any) -> Variant:
    """What the built-in tenants declare now (their templates, top_k, sampling)."""
    sales = tenants.get("sales")
    temperature = sales.temperature if getattr(sales, "temperature", None) is not None else 0.7
    rp = getattr(sales, "repetition_penalty", None) or 1.0
    runs = SAMPLED_RUNS if temperature > 0 else 1
    return Variant("new defaults", "tenant", sales.top_k or 4, temperature, rp, runs)


def sweep(quick: bool) -> list[Variant]:
    """One factor at a time from greedy decoding with each tenant's template and top_k 4."""
    if quick:
        return [Variant("greedy"), Variant("plain layout", layout="plain")]
    return [
        Variant("greedy"),
        Variant("layout plain", layout="plain"),
        Variant("layout question-twice", layout="question-twice"),
        *(Variant(f"top_k {k}", top_k=k) for k in (1, 2, 3)),
        *(Variant(f"repetition penalty {rp}", repetition_penalty=rp) for rp in (1.1, 1.2)),
        Variant("frequency penalty 0.5", frequency_penalty=0.5),
        Variant("plain, top_k 2", layout="plain", top_k=2),
        Variant("plain, top_k 2, rep 1.1", layout="plain", top_k=2, repetition_penalty=1.1),
        Variant("temperature 0.3", temperature=0.3, runs=SAMPLED_RUNS),
    ]


# --- running --------------------------------------------------------------------------------
def _template(tenant: Any, layout: str) -> Any:
    from core.tenancy import PromptTemplate

    if layout == "tenant":
        return tenant.prompt
    system, user, source = LAYOUTS[layout]
    return PromptTemplate(system=system, user=user, source=source, tenant_name=tenant.display_name)


def _services(ctx: BenchContext) -> tuple[Any, Any]:
    from core.db import upgrade_database
    from core.knowledge.service import KnowledgeService
    from core.plugins import load_tenants

    settings = ctx.settings("answer-quality")
    upgrade_database(settings.resolved_database_url)
    tenants = load_tenants(settings)
    ks = KnowledgeService(settings, tenants)
    ks.ensure_demo_documents()
    return ks, tenants


async def _generate(llm: Any, messages: list[dict[str, str]], v: Variant) -> str:
    from vllm import SamplingParams
    from vllm.inputs.engine import tokens_input

    from bench.engines import raw_prompt

    ids, text = raw_prompt(llm, messages)
    sampling = SamplingParams(
        max_tokens=MAX_TOKENS,
        temperature=v.temperature,
        repetition_penalty=v.repetition_penalty,
        frequency_penalty=v.frequency_penalty,
    )
    final = ""
    async for out in llm.generate(tokens_input(ids, prompt=text), sampling, uuid.uuid4().hex):
        final = out.outputs[0].text
    return final


def _prompts(ctx: BenchContext, ks: Any, items: list[AnswerItem], v: Variant) -> list[Any]:
    from core.chat.prompt import fit_prompt

    engine = ctx.engine()
    prompts = []
    for item in items:
        tenant = ks.tenants.get(item.tenant)
        sources = ks.retrieve(tenant, item.question, v.top_k)
        messages, _, _ = fit_prompt(
            _template(tenant, v.layout), item.question, sources, [],
            count_tokens=engine.count_prompt_tokens,
            prompt_cap=ks.settings.max_prompt_tokens,
        )  # fmt: skip
        prompts.append(messages)
    return prompts


def evaluate(ctx: BenchContext, ks: Any, items: list[AnswerItem], v: Variant) -> Outcome:
    """Every question of `items` answered `v`'s way (`runs` times), all in one batch."""
    llm = ctx.raw_llm()
    prompts = _prompts(ctx, ks, items, v)
    jobs = [(item, msgs) for _ in range(v.runs) for item, msgs in zip(items, prompts, strict=True)]

    async def answer_all() -> list[str]:
        return await asyncio.gather(*(_generate(llm, m, v) for _, m in jobs))

    outcome = Outcome(v)
    for (item, _), answer in zip(jobs, ctx.run(answer_all()), strict=True):
        ok = states_fact(answer, item.facts)
        outcome.stated.append(ok)
        outcome.degenerate.append(is_degenerate(answer))
        outcome.by_tenant.setdefault(item.tenant, []).append(ok)
        outcome.examples.setdefault(item.id, answer)
    return outcome


def run(ctx: BenchContext) -> BenchResult:
    """Old defaults, the one-factor sweep and the new defaults over the demo answer set."""
    result = BenchResult("answers", "Answer quality on the demo documents (bundled model)")
    items = [i for t in TENANTS for i in load_answer_set(t)]
    if ctx.quick:
        items = items[::6]
    ks, tenants = _services(ctx)
    variants = [old_defaults(), *sweep(ctx.quick), new_defaults(tenants)]
    outcomes = [evaluate(ctx, ks, items, v) for v in variants]
    _report(result, outcomes, len(items))
    return result


def _pct(values: list[bool]) -> float:
    return 100.0 * sum(values) / len(values) if values else float("nan")


def _report(result: BenchResult, outcomes: list[Outcome], n_items: int) -> None:
    rows = []
    for o in outcomes:
        v = o.variant
        rows.append(
            [v.name, v.layout, v.top_k, v.temperature, v.repetition_penalty,
             v.frequency_penalty, v.runs,
             _pct(o.stated), *(_pct(o.by_tenant.get(t, [])) for t in TENANTS),
             _pct(o.degenerate)]
        )  # fmt: skip
    result.tables.append(
        Table(
            f"Answers stating the expected fact, % ({n_items} questions x runs; max "
            f"{MAX_TOKENS} tokens; looped = a 3-word run repeated 3+ times)",
            [
                "variant",
                "layout",
                "top_k",
                "temperature",
                "rep. penalty",
                "freq. penalty",
                "runs",
                "stated %",
                *(f"{t} %" for t in TENANTS),
                "looped %",
            ],
            rows,
        )
    )
    old, new = outcomes[0], outcomes[-1]
    result.data = {
        o.variant.name: {"rate": o.rate, "looped": _pct(o.degenerate) / 100} for o in outcomes
    }
    result.data["examples"] = {"old defaults": old.examples, "new defaults": new.examples}
    result.targets.append(
        target("new defaults minus old: share stating the fact", new.rate - old.rate, "", ">", 0)
    )
    shown = list(new.examples)[:3]
    result.notes.append(
        "First answers of the old and the new defaults:\n\n"
        + "\n".join(
            f"- `{k}` old: {old.examples[k][:160]!r}\n  new: {new.examples[k][:160]!r}"
            for k in shown
        )
    )
