"""Issue 12, item 6 (production safety): `TENANTLLM_MODE=production` refuses every dev-only
default, naming the setting, before anything starts (no demo IdP, no engine).

Runs the real CLI (`python -m core.cli serve`) in a subprocess, as an operator would.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.common import REPO, free_port

# A production configuration with nothing wrong (the model path is, on purpose: see below).
GOOD = {
    "TENANTLLM_OIDC_ISSUER": "https://idp.example.com/realms/acme",
    "TENANTLLM_OIDC_CLIENT_SECRET": "a-real-client-secret-from-the-idp",
    "TENANTLLM_SECRET_KEY": "k" * 48,
    "TENANTLLM_MASTER_KEY": "m" * 48,
    "TENANTLLM_PUBLIC_URL": "https://llm.example.com",
}
DEV_DEFAULTS = {
    "TENANTLLM_OIDC_ISSUER": None,  # None: unset -> the demo IdP would start
    "TENANTLLM_OIDC_CLIENT_SECRET": None,
    "TENANTLLM_SECRET_KEY": "dev-insecure-change-me",
    "TENANTLLM_MASTER_KEY": None,
    "TENANTLLM_PUBLIC_URL": "http://llm.example.com",
}
MISSING_MODEL = "/nonexistent/model-folder"


def _serve(
    tmp_path: Path, settings: dict[str, str | None]
) -> tuple[subprocess.CompletedProcess[str], int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTLLM_")}
    idp_port = free_port()
    env.update(
        TENANTLLM_MODE="production",
        TENANTLLM_DATA_DIR=str(tmp_path / "data"),
        TENANTLLM_PORT=str(free_port()),
        TENANTLLM_DEMO_IDP_PORT=str(idp_port),
        # A missing model fails right after the settings are accepted, so a start that gets
        # past the production checks ends at once instead of loading an engine.
        TENANTLLM_MODEL=MISSING_MODEL,
    )
    env.update({k: v for k, v in settings.items() if v is not None})
    proc = subprocess.run(
        [sys.executable, "-m", "core.cli", "serve"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc, idp_port


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_no_configuration_names_every_problem(tmp_path: Path) -> None:
    proc, idp_port = _serve(tmp_path, {})
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    for name in DEV_DEFAULTS:
        assert name in proc.stderr, (name, proc.stderr)
    assert "Demo identity provider" not in proc.stdout
    assert "engine" not in (proc.stdout + proc.stderr).lower()
    assert not _listening(idp_port)


@pytest.mark.parametrize("name", list(DEV_DEFAULTS))
def test_each_dev_default_is_refused_by_name(tmp_path: Path, name: str) -> None:
    proc, idp_port = _serve(tmp_path, {**GOOD, name: DEV_DEFAULTS[name]})
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert name in proc.stderr and "production" in proc.stderr, proc.stderr
    assert MISSING_MODEL not in proc.stderr  # refused before anything else was looked at
    assert "Demo identity provider" not in proc.stdout
    assert not _listening(idp_port)


def test_a_proper_production_configuration_is_accepted(tmp_path: Path) -> None:
    proc, _ = _serve(tmp_path, GOOD)
    # It got past the production checks: what stops it now is the (deliberately) missing model.
    assert proc.returncode == 1
    assert MISSING_MODEL in proc.stderr, proc.stderr
    assert "production mode" not in proc.stderr
