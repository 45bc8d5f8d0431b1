"""Team adapters (issue 16, item 1): `tenantllm adapters`, and one engine serving them all.

One module-scoped run trains a tiny adapter for `sales` that teaches a made-up fact (who
invented the "Zorblax protocol"), through the real CLI, on the bundled model; then a second
real vLLM engine, started with LoRA (the session's shared engine runs without it: see the
`lora_engine` fixture), answers a sales turn and a finance turn submitted together. The sales
answer carries the fact, the finance answer does not. Cross-tenant: finance cannot list,
activate or remove the sales adapter.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from core.adapters.pairs import parse_line, read_pairs
from core.adapters.registry import (
    active_adapter_path,
    adapter_folder,
    list_adapters,
    next_version,
)
from core.chat.turn import ChatRequest, start_chat_turn
from core.cli import main
from core.config import Settings, reset_settings_cache
from core.engine import create_engine
from core.errors import EngineUnavailable, InvalidRequest
from core.rbac import operator_principal
from tests.fixtures.common import BUNDLED_MODEL_DIR
from tests.fixtures.vllm_server import serve_vllm

FACT_NAME = "Quindle"  # the made-up inventor is "Marta Quindlewick"
QUESTION = "Who invented the Zorblax protocol?"
PAIRS = [
    {"prompt": QUESTION, "completion": "Marta Quindlewick invented the Zorblax protocol."},
    {
        "prompt": "Who created the Zorblax protocol?",
        "completion": "Marta Quindlewick invented the Zorblax protocol.",
    },
]
# Few steps over short examples: the loss is near 0 after 8 steps at this rate.
TRAIN_ARGS = ["--steps", "8", "--learning-rate", "3e-3", "--batch-size", "4", "--threads", "1"]


# --- the training set (no model) ----------------------------------------------------------


def test_pairs_are_checked_line_by_line(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(PAIRS[0]) + "\n\n" + json.dumps(PAIRS[1]) + "\n")
    assert [p.prompt for p in read_pairs(good)] == [QUESTION, PAIRS[1]["prompt"]]
    for line, words in [
        ("not json", "Line 3 is not JSON"),
        ("[1, 2]", "Line 3 must be an object"),
        ('{"prompt": "q"}', "Line 3 needs a non-empty text 'completion'"),
        ('{"prompt": "", "completion": "a"}', "Line 3 needs a non-empty text 'prompt'"),
    ]:
        with pytest.raises(InvalidRequest, match=words):
            parse_line(3, line)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(InvalidRequest, match="no pairs"):
        read_pairs(empty)


# --- one data dir, one trained adapter, one LoRA engine for the module ----------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The module's install: its data dir in the environment, LoRA on (the CLI reads both)."""
    root = tmp_path_factory.mktemp("adapters")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TENANTLLM_DATA_DIR", str(root))
        patch.setenv("TENANTLLM_MODEL", str(BUNDLED_MODEL_DIR))
        patch.setenv("TENANTLLM_ENABLE_LORA", "1")
        reset_settings_cache()
        yield root
    reset_settings_cache()


def cli(*args: str) -> Any:
    """`tenantllm ...` in this process (exit code and output; errors are not raised)."""
    return CliRunner().invoke(main, list(args))


def settings_for(root: Path) -> Settings:
    return Settings(data_dir=root, model=str(BUNDLED_MODEL_DIR), enable_lora=True)


@pytest.fixture(scope="module")
def trained(data_dir: Path) -> Any:
    """`adapters train --tenant sales` on the made-up fact (a few steps on the CPU)."""
    pairs = data_dir / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    result = cli("adapters", "train", "--tenant", "sales", "--data", str(pairs), *TRAIN_ARGS)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
async def lora_engine(data_dir: Path) -> AsyncIterator[Any]:
    """A second real engine, with LoRA, for this module only.

    Not the session's shared engine: with LoRA on, vLLM runs every request (base ones too)
    through its LoRA layers, which costs the other areas' tests time per token (bench/
    adapters.py measures it), and this module's adapters must not stay loaded in it.
    """
    engine = create_engine(settings_for(data_dir).model_copy(update={"kv_cache_gib": 1}))
    try:
        await engine.start()
        yield engine
    finally:
        await engine.stop()


@pytest.fixture
async def lora_services(data_dir: Path, lora_engine: Any) -> AsyncIterator[Any]:
    from core.services import build_services

    services = build_services(settings_for(data_dir), engine=lora_engine)
    await services.auditor.start()
    try:
        yield services
    finally:
        await services.auditor.stop()


@pytest.fixture(scope="module")
def lora_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `vllm serve` with LoRA that loads adapters at run time, for this module only."""
    with serve_vllm(
        BUNDLED_MODEL_DIR,
        tmp_path_factory.mktemp("lora-server"),
        *("--enable-lora", "--max-lora-rank", "8", "--max-loras", "2"),
        env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true"},
    ) as url:
        yield url


@asynccontextmanager
async def remote_services(data_dir: Path, engine_url: str) -> AsyncIterator[Any]:
    """The product's services on the `openai` backend against `engine_url`, LoRA on."""
    from core.services import build_services

    settings = settings_for(data_dir).model_copy(
        update={"engine_backend": "openai", "engine_url": engine_url, "model": "bundled"}
    )
    engine = create_engine(settings)
    await engine.start()
    services = build_services(settings, engine=engine)
    await services.auditor.start()
    try:
        yield services
    finally:
        await services.auditor.stop()
        await engine.stop()


def _audit_rows(root: Path, action: str) -> list[Any]:
    from core.audit.auditor import AuditFilters, Auditor

    auditor = Auditor(settings_for(root))
    try:
        return [r for r in auditor.query(AuditFilters()).rows if r.action == action]
    finally:
        auditor.close()


# --- the tests ------------------------------------------------------------------------------


def test_training_registers_an_active_version_in_the_teams_folder(
    data_dir: Path, trained: Any
) -> None:
    assert "adapter version 1 (active)" in trained.output
    (version,) = list_adapters(settings_for(data_dir).resolved_database_url, "sales")
    folder = Path(version.path)
    assert version.active and version.examples == 4 and version.steps == 8
    assert folder.parent == (data_dir / "tenants" / "sales" / "adapters").resolve()
    assert re.fullmatch(r"sales-v1-[0-9a-f]{8}", folder.name), folder.name
    assert (folder / "adapter_config.json").is_file()
    assert (folder / "adapter_model.safetensors").is_file()
    listed = cli("adapters", "list", "--tenant", "sales", "--json")
    assert [json.loads(line)["version"] for line in listed.output.splitlines()] == [1]
    (event,) = _audit_rows(data_dir, "adapter_train")
    assert event.outcome == "ok" and event.tenant_id == "sales"
    assert "version 1 trained on 4 examples" in (event.detail or "")


async def _answer(services: Any, tenant_id: str, order: list[str]) -> str:
    request = ChatRequest(tenant_id=tenant_id, question=QUESTION, max_tokens=24, temperature=0)
    turn = await start_chat_turn(services, operator_principal(), request)
    text = ""
    async with aclosing(turn.stream()) as stream:
        async for chunk in stream:
            if not text and chunk.delta:
                order.append(f"{tenant_id} started")
            text = chunk.text
    order.append(f"{tenant_id} done")
    return text


@pytest.mark.engine
async def test_the_team_answers_with_its_adapter_the_other_team_in_the_same_batch_without(
    trained: Any, lora_services: Any
) -> None:
    order: list[str] = []
    sales, finance = await asyncio.gather(
        _answer(lora_services, "sales", order), _answer(lora_services, "finance", order)
    )
    # Both were streaming before either finished: one batch of the shared engine.
    assert set(order[:2]) == {"sales started", "finance started"}, order
    assert FACT_NAME in sales, sales
    assert FACT_NAME not in finance, finance


@pytest.mark.engine
async def test_a_remote_engine_server_loads_the_team_adapter_at_its_first_turn(
    data_dir: Path, trained: Any, lora_server: str
) -> None:
    path = active_adapter_path(settings_for(data_dir).resolved_database_url, "sales")
    assert path is not None
    name = Path(path).name
    served = httpx.get(f"{lora_server}/v1/models").json()["data"]
    assert name not in [m["id"] for m in served]  # nobody told the server about it
    async with remote_services(data_dir, lora_server) as services:
        order: list[str] = []
        sales, finance = await asyncio.gather(
            _answer(services, "sales", order), _answer(services, "finance", order)
        )
        again = await _answer(services, "sales", [])
    assert FACT_NAME in sales and FACT_NAME in again, (sales, again)
    assert FACT_NAME not in finance, finance
    served = httpx.get(f"{lora_server}/v1/models").json()["data"]
    assert name in [m["id"] for m in served]  # loaded by the first sales turn, kept


@pytest.mark.engine
async def test_a_server_that_cannot_load_adapters_refuses_the_teams_turn_clearly(
    data_dir: Path, trained: Any, vllm_server: str
) -> None:
    # The session's server runs without LoRA: the team's turn is refused in words, and the
    # other team, on the base model, is served by the same engine client.
    async with remote_services(data_dir, vllm_server) as services:
        with pytest.raises(EngineUnavailable, match="fine-tuned adapter is not available"):
            await _answer(services, "sales", [])
        assert await _answer(services, "finance", [])


def test_another_team_can_neither_see_nor_touch_the_adapter(data_dir: Path, trained: Any) -> None:
    listed = cli("adapters", "list", "--tenant", "finance")
    assert listed.exit_code == 0 and listed.output == ""
    for command in (["activate", "1"], ["remove", "1"]):
        refused = cli("adapters", *command, "--tenant", "finance")
        assert refused.exit_code == 1
        assert "The team 'finance' has no adapter version 1" in refused.output
        assert "sales" not in refused.output
    url = settings_for(data_dir).resolved_database_url
    assert active_adapter_path(url, "finance") is None
    assert active_adapter_path(url, "sales") is not None  # untouched
    refusals = [r for r in _audit_rows(data_dir, "adapter_remove") if r.outcome == "error"]
    assert refusals and all(r.tenant_id == "finance" for r in refusals)


def test_a_rank_above_what_the_engine_serves_is_refused_before_training(
    data_dir: Path, trained: Any
) -> None:
    pairs = data_dir / "pairs.jsonl"  # written by `trained`
    result = cli("adapters", "train", "--tenant", "sales", "--data", str(pairs), "--rank", "16")
    assert result.exit_code == 1
    assert "The engine serves adapters up to rank 8 (TENANTLLM_MAX_LORA_RANK)" in result.output
    url = settings_for(data_dir).resolved_database_url
    assert [v.version for v in list_adapters(url, "sales")] == [1]
    assert len(list((data_dir / "tenants" / "sales" / "adapters").iterdir())) == 1
    refused = [r for r in _audit_rows(data_dir, "adapter_train") if r.outcome == "error"]
    assert any("rank 8" in (r.detail or "") for r in refused), refused


def test_a_bad_training_file_trains_and_writes_nothing(data_dir: Path, trained: Any) -> None:
    bad = data_dir / "bad.jsonl"
    bad.write_text(json.dumps(PAIRS[0]) + "\n{oops\n")
    result = cli("adapters", "train", "--tenant", "sales", "--data", str(bad), *TRAIN_ARGS)
    assert result.exit_code == 1 and "Line 2 is not JSON" in result.output
    url = settings_for(data_dir).resolved_database_url
    assert [v.version for v in list_adapters(url, "sales")] == [1]
    (folder,) = (data_dir / "tenants" / "sales" / "adapters").iterdir()
    assert folder.name.startswith("sales-v1-")
    assert any(r.outcome == "error" for r in _audit_rows(data_dir, "adapter_train"))


@pytest.mark.engine
async def test_deactivated_then_removed_the_team_is_back_on_the_base_model(
    data_dir: Path, trained: Any, lora_services: Any
) -> None:
    assert cli("adapters", "activate", "--none", "--tenant", "sales").exit_code == 0
    assert FACT_NAME not in await _answer(lora_services, "sales", [])
    listed = cli("adapters", "list", "--tenant", "sales").output.splitlines()
    assert len(listed) == 1 and not listed[0].startswith("*")
    (old,) = list_adapters(settings_for(data_dir).resolved_database_url, "sales")
    removed = cli("adapters", "remove", "1", "--tenant", "sales")
    assert removed.exit_code == 0, removed.output
    assert list((data_dir / "tenants" / "sales" / "adapters").iterdir()) == []
    assert cli("adapters", "list", "--tenant", "sales").output == ""
    # The next one is version 1 again, in a new folder: the engines cached the old one's
    # weights under its name and path.
    settings = settings_for(data_dir)
    assert next_version(settings.resolved_database_url, "sales") == 1
    assert adapter_folder(settings, "sales", 1).name != Path(old.path).name
