"""The wheel `make dist` builds installs into a fresh venv and runs outside the checkout.

A fresh venv (no packages of its own) gets the wheel with `pip install --no-deps --no-index`.
Its dependencies (vLLM, gradio, ...) are far too big to install again per run, so a `.pth`
file then points at the project venv's site-packages: as a plain path line, so that venv's
own `.pth` files do not run, among them the editable install's finder that would map `core`
back to this checkout. Installing before the `.pth` exists keeps pip from ever seeing (and
offering to replace) the editable install.

Then `tenantllm serve` runs from an empty folder on a fresh data dir, with no identity
provider configured (so the demo provider starts, as for a person trying the wheel): the
schema comes from the wheel's migrations, the demo documents from its assets, the logo from
its copy (marked after install, so a logo read from the checkout would show).

Heavy (the real engine): run it under the shared lock, `flock /tmp/tenantllm-heavy.lock`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from core.cli.version import checkout_version
from tests.fixtures.app_server import wait_ready
from tests.fixtures.common import BUNDLED_MODEL_DIR, REPO, free_port

# The first test pays for the module's fixtures: a wheel build and a cold `serve` (engine,
# demo documents), which took 300 s on a busy 2-core machine.
pytestmark = [pytest.mark.engine, pytest.mark.timeout(1200)]

MARK = "<!-- tenantllm wheel test: the installed copy -->"


@dataclass
class Installed:
    """A venv holding the wheel, and the folder it is run from (not the checkout)."""

    venv: Path
    wheel: Path
    workdir: Path

    @property
    def site(self) -> Path:
        """The venv's own site-packages (where the wheel went)."""
        python = f"python{sys.version_info.major}.{sys.version_info.minor}"
        return self.venv / "lib" / python / "site-packages"

    def run(self, *args: str, env: dict[str, str] | None = None) -> str:
        """Run a program of the venv's bin/ in the work dir; its stdout (it must succeed)."""
        done = subprocess.run(
            [str(self.venv / "bin" / args[0]), *args[1:]],
            cwd=self.workdir,
            env=env or _clean_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout


def _clean_env() -> dict[str, str]:
    # Nothing of the checkout may leak in through the environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTLLM_")}
    env.pop("PYTHONPATH", None)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """`make dist`, a fresh venv, the wheel installed into it offline."""
    dist = tmp_path_factory.mktemp("dist")
    # `-o setup`: the venv is ready (the test runs in it); never reinstall from a test.
    subprocess.run(
        ["make", "-s", "-o", "setup", "dist", f"DIST={dist}"],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = dist.glob("tenantllm-*.whl")
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    subprocess.run(
        [*pip, "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    found = Installed(venv, wheel, tmp_path_factory.mktemp("elsewhere"))
    project_site = Path(sysconfig.get_paths()["purelib"])
    (found.site / "project-deps.pth").write_text(f"{project_site}\n", encoding="utf-8")
    logo = found.site / "core" / "assets" / "logo.svg"
    logo.write_text(logo.read_text(encoding="utf-8") + MARK + "\n", encoding="utf-8")
    return found


def test_version_is_the_pyproject_version(installed: Installed) -> None:
    version = checkout_version(REPO / "pyproject.toml")
    assert installed.run("tenantllm", "--version").strip() == f"tenantllm {version}"
    assert installed.wheel.name.startswith(f"tenantllm-{version}-")


def test_the_venv_imports_the_installed_copy(installed: Installed) -> None:
    probe = (
        "import json, core, tenant_plugins; from core.db import MIGRATIONS_DIR;"
        "from core.resources import assets_dir;"
        "print(json.dumps([core.__file__, str(MIGRATIONS_DIR), tenant_plugins.__file__,"
        " str(assets_dir())]))"
    )
    paths = [Path(p) for p in json.loads(installed.run("python", "-c", probe))]
    assert all(p.is_relative_to(installed.site) for p in paths), paths
    assert not any(p.is_relative_to(REPO) for p in paths)


@dataclass
class Served:
    """`tenantllm serve` of the installed copy, running."""

    base_url: str
    data_dir: Path
    env: dict[str, str]
    log: Path


@pytest.fixture(scope="module")
def served(installed: Installed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The installed `tenantllm serve`, from the empty work dir, on a fresh data dir."""
    data_dir = tmp_path_factory.mktemp("wheel-data") / "data"  # created by serve itself
    port = free_port()
    env = {
        **_clean_env(),
        "TENANTLLM_DATA_DIR": str(data_dir),
        "TENANTLLM_PORT": str(port),
        "TENANTLLM_DEMO_IDP_PORT": str(free_port()),
        # The converted bundled model (`make setup`); converting it again would take minutes.
        "TENANTLLM_MODEL": str(BUNDLED_MODEL_DIR),
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }
    log = data_dir.parent / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(installed.venv / "bin" / "tenantllm"), "serve"],
            cwd=installed.workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, proc, log, timeout=900)
        yield Served(base_url, data_dir, env, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_serve_answers_health_and_readiness(served: Served) -> None:
    assert httpx.get(f"{served.base_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{served.base_url}/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_the_wheels_own_logo_is_served(served: Served) -> None:
    favicon = httpx.get(f"{served.base_url}/favicon.ico")
    assert favicon.status_code == 200
    assert MARK in favicon.text  # the installed copy's logo, not the checkout's


def test_sign_in_goes_to_the_demo_provider_it_started(served: Served) -> None:
    """No identity provider configured: the installed copy starts the demo one itself."""
    page = httpx.get(f"{served.base_url}/", headers={"Accept": "text/html"})
    assert page.status_code == 302 and page.headers["location"].endswith("/login")
    login = httpx.get(f"{served.base_url}/login")
    assert login.status_code == 302
    issuer = f"http://127.0.0.1:{served.env['TENANTLLM_DEMO_IDP_PORT']}"
    assert login.headers["location"].startswith(f"{issuer}/")
    assert httpx.get(login.headers["location"]).status_code == 200  # its sign-in form


def test_the_schema_comes_from_the_wheels_migrations(served: Served, installed: Installed) -> None:
    versions = installed.site / "core" / "migrations" / "versions"
    revisions = {p.stem.split("_")[0] for p in versions.glob("[0-9]*.py")}
    with sqlite3.connect(served.data_dir / "tenantllm.db") as db:
        [(head,)] = db.execute("SELECT version_num FROM alembic_version").fetchall()
    assert head == max(revisions)


def test_an_api_answer_uses_the_wheels_demo_documents(served: Served, installed: Installed) -> None:
    out = installed.run("tenantllm", "keys", "create", "--tenant", "sales", env=served.env)
    [secret] = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("API key:")]
    response = httpx.post(
        f"{served.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret}"},
        json={
            "model": "sales",
            "messages": [{"role": "user", "content": "What are the standard discounts?"}],
            "max_tokens": 16,
        },
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"].strip()
    demo = {p.name for p in (installed.site / "core" / "assets" / "demo_docs" / "sales").iterdir()}
    sources = {s["filename"] for s in body["tenantllm"]["sources"]}
    assert sources and sources <= demo
