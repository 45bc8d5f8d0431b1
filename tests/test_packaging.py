"""The wheel: it holds every module and every asset, and an installed copy finds its own assets
(logo, CSS, demo documents, group mapping) without a checkout around it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from core.auth.group_mapping import resolve_mapping_path
from core.knowledge.demo import demo_docs_dir
from core.resources import assets_dir

REPO = Path(__file__).resolve().parents[1]
SOURCES = [
    "pyproject.toml", "README.md", "LICENSE", "app.py", "core", "tenant_plugins", "assets"
]  # fmt: skip

# Run in the unpacked wheel, with the checkout nowhere on sys.path.
PROBE = """
import json
from pathlib import Path

import core
from core.auth.group_mapping import resolve_mapping_path
from core.knowledge.demo import demo_docs_dir
from core.resources import assets_dir

print(json.dumps({
    "core": core.__file__,
    "assets": str(assets_dir()),
    "demo_docs": str(demo_docs_dir()),
    "group_mapping": str(resolve_mapping_path(Path("assets/group_mapping.yaml"))),
}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built offline from a copy of the sources (a build in place leaves build/ behind)."""
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    out = tmp_path_factory.mktemp("dist")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1"}
    subprocess.run(
        [*command, "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
        env=env,
        timeout=120,
    )
    [built] = out.glob("*.whl")
    return built


def _files_under(folder: Path) -> set[Path]:
    return {
        p.relative_to(folder)
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_the_wheel_holds_every_module_and_every_asset(wheel: Path) -> None:
    """pyproject lists the packages by hand (see its comment): nothing may be left out."""
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {"app.py"}
    for package in ("core", "tenant_plugins"):
        expected |= {f"{package}/{p.as_posix()}" for p in _files_under(REPO / package)}
    expected |= {f"core/assets/{p.as_posix()}" for p in _files_under(REPO / "assets")}
    assert expected - names == set()


def test_an_installed_copy_finds_its_own_assets(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=tmp_path,  # not the checkout: its assets/ must not be found by the working dir
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = {key: Path(value) for key, value in json.loads(probe.stdout).items()}
    installed = site / "core"
    assert found["core"] == installed / "__init__.py"
    assert found["assets"] == installed / "assets"
    assert (found["assets"] / "logo.svg").read_text(encoding="utf-8").lstrip().startswith("<")
    assert "tl-" in (found["assets"] / "theme.css").read_text(encoding="utf-8")
    assert found["group_mapping"] == installed / "assets" / "group_mapping.yaml"
    assert found["group_mapping"].is_file()
    tenants = {d.name for d in found["demo_docs"].iterdir() if any(d.iterdir())}
    assert tenants == {"development", "finance", "sales"}
    assert not any(path.is_relative_to(REPO) for path in found.values())


def test_a_checkout_finds_the_top_level_assets() -> None:
    assert assets_dir() == REPO / "assets"
    assert demo_docs_dir() == REPO / "assets" / "demo_docs"
    default = resolve_mapping_path(Path("assets/group_mapping.yaml"))
    assert default == REPO / "assets" / "group_mapping.yaml"
