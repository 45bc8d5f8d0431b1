"""`tenantllm ask "QUESTION"`: one answer from the engine, printed as it arrives.

Without `--tenant` the question goes straight to the model; with `--tenant` it takes the same
path as a chat in the UI (the operator's local identity, the tenant's documents and prompt,
the audit log) and the sources are printed under the answer.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import asdict
from typing import Any

import click

from core.chat.request import ChatRequest
from core.chat.turn import start_chat_turn
from core.cli.base import main, run_interruptible, user_errors
from core.config import Settings, get_settings
from core.engine import create_engine
from core.engine.base import GenerationChunk, GenerationParams
from core.rbac import operator_principal
from core.services import build_services

# Salts the prefix cache of direct questions apart from every tenant's.
DIRECT_TENANT = "_cli"


@main.command()
@click.argument("question")
@click.option("--tenant", default=None, help="Ask as this tenant (its documents and prompt).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object at the end.")
@click.option("--max-tokens", type=int, default=None, help="Longest answer, in tokens.")
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy.")
@user_errors
def ask(
    question: str, tenant: str | None, as_json: bool, max_tokens: int | None, temperature: float
) -> None:
    """Ask the model one question and print the answer as it arrives."""
    # vLLM logs to stdout by default; the answer owns stdout.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    settings = get_settings()
    if tenant is None:
        result = run_interruptible(
            _ask_direct(settings, question, as_json, max_tokens, temperature)
        )
    else:
        result = run_interruptible(
            _ask_tenant(settings, tenant, question, as_json, max_tokens, temperature)
        )
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False))


async def _ask_direct(
    settings: Settings, question: str, as_json: bool, max_tokens: int | None, temperature: float
) -> dict[str, Any]:
    engine = create_engine(settings)
    try:
        await engine.start()
        params = GenerationParams(
            max_tokens=max_tokens or settings.default_max_tokens, temperature=temperature
        )
        messages = [{"role": "user", "content": question}]
        chunks = engine.stream_chat(messages, params, engine.default_options(DIRECT_TENANT))
        last = await _print_stream(chunks, echo=not as_json)
        return _result(last, tenant=None, sources=[])
    finally:
        # Always, also on Ctrl-C: no engine process may outlive the command.
        await engine.stop()


async def _ask_tenant(
    settings: Settings,
    tenant: str,
    question: str,
    as_json: bool,
    max_tokens: int | None,
    temperature: float,
) -> dict[str, Any]:
    services = build_services(settings, with_engine=True)
    assert services.engine is not None
    await services.auditor.start()
    try:
        await asyncio.to_thread(services.knowledge.ensure_demo_documents)
        await services.engine.start()
        request = ChatRequest(
            tenant_id=tenant,
            question=question,
            max_tokens=max_tokens,
            temperature=temperature,
            channel="cli",
        )
        turn = await start_chat_turn(services, operator_principal(), request)
        last = await _print_stream(turn.stream(), echo=not as_json)
        sources = [asdict(source) for source in turn.sources]
        if not as_json:
            for number, source in enumerate(turn.sources, start=1):
                click.echo(f"[{number}] {source.filename} ({source.location})")
        return _result(last, tenant=tenant, sources=sources)
    finally:
        await services.engine.stop()
        await services.auditor.stop()


async def _print_stream(
    chunks: AsyncGenerator[GenerationChunk, None], *, echo: bool
) -> GenerationChunk | None:
    last = None
    async with aclosing(chunks) as stream:
        async for chunk in stream:
            if echo and chunk.delta:
                click.echo(chunk.delta, nl=False)
            last = chunk
    if echo:
        click.echo()
    return last


def _result(
    last: GenerationChunk | None, *, tenant: str | None, sources: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "answer": last.text if last else "",
        "finish_reason": last.finish_reason if last else None,
        "prompt_tokens": last.prompt_tokens if last else 0,
        "completion_tokens": last.completion_tokens if last else 0,
        "tenant": tenant,
        "sources": sources,
    }
