"""Benchmark 7: what the prefix-cache salt scope costs (`TENANTLLM_PREFIX_CACHE_SCOPE`).

vLLM's prefix cache skips the prefill of a prompt prefix it has computed before under the same
`cache_salt`. With `tenant` scope a team's users share the cache, so every user after the
first finds the team's long system prompt already computed; with `user` scope (the default,
no timing channel between teammates, CVE-2025-46570) each user computes it once. The
baseline is no reuse at all: a salt of its own for every request.

Each round builds a fresh system prompt (nothing cached from an earlier round) and runs the
three variants in a rotating order on the product's engine (`Engine.stream_chat`, which
derives the salt), one request at a time: `USERS` teammates each ask their first question,
then the first user asks a follow-up in the same conversation. Reported: time to first token
of the 2nd..Nth users' first questions (what the scope changes), of the follow-up (what it
does not change), and vLLM's own count of prompt tokens served from the cache.
"""

from __future__ import annotations

import time
import uuid

from bench.common import BenchContext, BenchResult, Table, percentile, ratio, target
from core.engine.base import Engine, GenerationParams

USERS = 4
VARIANTS = ("tenant", "user", "none")
TENANT = "bench-prefix"
ONE_TOKEN = GenerationParams(max_tokens=1, temperature=0.0)  # the first token is the TTFT
QUESTIONS = [
    "What is the standard discount for annual contracts?",
    "Who approves a discount above twenty percent?",
    "How are renewals handled?",
    "What should I say to a customer who asks for a free pilot?",
]
FOLLOW_UP = "And for a two-year contract?"


def system_prompt(tag: str, rules: int) -> str:
    """A team's long system prompt (instructions and policy), unique to one round by `tag`."""
    lines = [f"[{tag}] You are the assistant of the sales team. Follow the team's policy:"]
    lines += [
        f"{i}. Section {i}: quote the playbook, name the owner of the rule and keep a polite tone."
        for i in range(1, rules + 1)
    ]
    return "\n".join(lines)


async def _ask(
    engine: Engine, messages: list[dict[str, str]], variant: str, user: str
) -> tuple[float, int, int]:
    """One request's (ttft_ms, prompt_tokens, cached_tokens) under `variant`."""
    # `none`: a tenant id no other request uses, hence a salt no other request has.
    tenant = f"{TENANT}-{uuid.uuid4().hex}" if variant == "none" else TENANT
    started = time.perf_counter()
    ttft, last = float("nan"), None
    options = engine.default_options(tenant, user_id=user)
    async for chunk in engine.stream_chat(messages, ONE_TOKEN, options):
        if ttft != ttft:  # first chunk
            ttft = (time.perf_counter() - started) * 1000.0
        last = chunk
    assert last is not None
    return ttft, last.prompt_tokens, last.cached_tokens


async def _round(engine: Engine, variant: str, system: str) -> dict[str, list[float]]:
    """USERS first questions, then user 0's follow-up, with `engine` set to `variant`."""
    scope = "tenant" if variant == "tenant" else "user"
    base = engine.settings
    engine.settings = base.model_copy(update={"prefix_cache_scope": scope})
    out: dict[str, list[float]] = {"first": [], "teammates": [], "follow": [], "cached": []}
    try:
        first: list[dict[str, str]] = []
        for u in range(USERS):
            messages = [
                {"role": "system", "content": system},
                {"role": "user", "content": QUESTIONS[u % len(QUESTIONS)]},
            ]
            ttft, prompt, cached = await _ask(engine, messages, variant, f"user-{u}")
            out["first" if u == 0 else "teammates"].append(ttft)
            if u:
                out["cached"].append(cached / prompt)
            first = first or messages
        follow = [*first, {"role": "assistant", "content": "Twelve percent."}]
        follow.append({"role": "user", "content": FOLLOW_UP})
        out["follow"].append((await _ask(engine, follow, variant, "user-0"))[0])
    finally:
        engine.settings = base
    return out


def _p50(values: list[float]) -> float:
    return percentile(values, 50)


def run(ctx: BenchContext) -> BenchResult:
    """Run the rounds and report TTFT per scope, as ratios to no reuse."""
    result = BenchResult("prefix", "7. Prefix-cache salt scope: user vs tenant")
    engine = ctx.engine()
    rounds, rules = ctx.scale(6, 2), ctx.scale(40, 20)
    samples: dict[str, dict[str, list[float]]] = {
        v: {"first": [], "teammates": [], "follow": [], "cached": []} for v in VARIANTS
    }
    prompt_tokens = engine.count_prompt_tokens(
        [{"role": "system", "content": system_prompt("x" * 32, rules)}]
    )
    for r in range(rounds):
        order = VARIANTS[r % 3 :] + VARIANTS[: r % 3]  # rotate: no variant always goes first
        for variant in order:
            system = system_prompt(uuid.uuid4().hex, rules)
            for key, values in ctx.run(_round(engine, variant, system)).items():
                samples[variant][key].extend(values)
    _report(result, samples, rounds, prompt_tokens)
    return result


def _report(
    result: BenchResult, samples: dict[str, dict[str, list[float]]], rounds: int, tokens: int
) -> None:
    none = samples["none"]
    rows = []
    for v in VARIANTS:
        s = samples[v]
        rows.append(
            [
                v,
                _p50(s["teammates"]),
                ratio(_p50(s["teammates"]), _p50(none["teammates"])),
                _p50(s["follow"]),
                ratio(_p50(s["follow"]), _p50(none["follow"])),
                100.0 * sum(s["cached"]) / max(len(s["cached"]), 1),
            ]
        )
    result.tables.append(
        Table(
            f"TTFT p50 (ms), {rounds} rounds x {USERS} users, system prompt ~{tokens} tokens, "
            "one request at a time; ratios to `none` (no reuse)",
            [
                "salt scope",
                "2nd..Nth user's 1st question",
                "vs none",
                "same user's follow-up",
                "vs none",
                "teammates' prompt cached %",
            ],
            rows,
        )
    )
    result.data = {"samples_ms": samples, "rounds": rounds, "users": USERS, "tokens": tokens}
    user, tenant = samples["user"], samples["tenant"]
    cost = ratio(_p50(user["teammates"]), _p50(tenant["teammates"]))
    result.notes.append(
        f"Scope `user` makes a teammate's first question {cost:.2f}x as slow as scope `tenant` "
        "(the shared system prompt is computed once per user instead of once per team); a "
        "user's own follow-ups hit their cache in both scopes."
    )
    result.targets += [
        target("prefix scope=user: teammates' prompt tokens from cache", _max(user), "%", "<=", 0),
        target(
            "prefix scope=user vs tenant: same user's follow-up TTFT p50",
            ratio(_p50(user["follow"]), _p50(tenant["follow"])),
            "x",
            "<=",
            1.5,
        ),
    ]


def _max(samples: dict[str, list[float]]) -> float:
    return 100.0 * max(samples["cached"], default=float("nan"))
