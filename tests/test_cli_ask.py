"""`tenantllm ask` as a user runs it: a real process, a real engine, nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TENANTLLM = str(Path(sys.executable).parent / "tenantllm")
OUR_CODE = str(Path(__file__).resolve().parents[1] / "core")


def _env(data_dir: Path, model: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTLLM_")}
    env.update(
        TENANTLLM_DATA_DIR=str(data_dir),
        TENANTLLM_MODEL=model,
        HF_HUB_OFFLINE="1",
        VLLM_CPU_KVCACHE_SPACE="1",
    )
    return env


def _session_processes(session_id: int) -> list[int]:
    """Processes still alive in the command's session (the engine core would be one)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) == session_id:
                alive.append(int(entry.name))
        except (ProcessLookupError, PermissionError):
            continue
    return alive


def _wait_gone(session_id: int, deadline_s: float = 60) -> list[int]:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and _session_processes(session_id):
        time.sleep(0.5)
    return _session_processes(session_id)


def test_unreadable_model_is_one_clear_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [TENANTLLM, "ask", "Hello?"],
        env=_env(tmp_path, "/nonexistent/model"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and "/nonexistent/model" in lines[0]


@pytest.mark.engine
@pytest.mark.timeout(1200)  # a whole engine start per test: slow on a busy machine
def test_ask_prints_the_answer_and_leaves_no_engine(
    tmp_path: Path, bundled_model_dir: Path
) -> None:
    process = subprocess.Popen(
        [TENANTLLM, "ask", "What is the capital of France?", "--max-tokens", "32"],
        env=_env(tmp_path, str(bundled_model_dir)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    stdout, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stderr[-3000:]
    assert "Paris" in stdout
    assert "Traceback" not in stderr
    assert _wait_gone(process.pid) == []


@pytest.mark.engine
@pytest.mark.timeout(1200)  # a whole engine start per test: slow on a busy machine
def test_ctrl_c_stops_cleanly(tmp_path: Path, bundled_model_dir: Path) -> None:
    process = subprocess.Popen(
        [TENANTLLM, "ask", "Write a very long story about a lighthouse.", "--max-tokens", "512"],
        env=_env(tmp_path, str(bundled_model_dir)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stdout is not None
    first = process.stdout.read(1)  # the answer has started streaming: the engine is up
    assert first, "no answer started"
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    _, stderr = process.communicate(timeout=300)
    text = stderr.decode(errors="replace")
    assert process.returncode == 130, text[-3000:]
    assert "interrupted" in text
    # A terminal's Ctrl-C reaches vLLM's engine core and worker too (one process group);
    # when it lands mid-step they race to exit and vLLM logs *their* traceback. Ours must
    # not: no frame of tenantllm's code and no KeyboardInterrupt.
    assert OUR_CODE not in text and "KeyboardInterrupt" not in text, text[-3000:]
    assert _wait_gone(process.pid) == []


@pytest.mark.engine
@pytest.mark.timeout(1200)
def test_ask_as_a_tenant_prints_json(
    tmp_path: Path, bundled_model_dir: Path, vllm_server: str
) -> None:
    # On the remote backend (the run's vLLM server): no engine start of its own.
    env = {**_env(tmp_path, str(bundled_model_dir)), "TENANTLLM_ENGINE_BACKEND": "openai",
           "TENANTLLM_ENGINE_URL": vllm_server}  # fmt: skip
    result = subprocess.run(
        [
            TENANTLLM,
            "ask",
            "What do you know?",
            "--tenant",
            "sales",
            "--json",
            "--max-tokens",
            "24",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout)
    assert answer["tenant"] == "sales"
    assert answer["answer"] and answer["completion_tokens"] > 0
    assert isinstance(answer["sources"], list)
    assert all(source["document_id"] for source in answer["sources"])
