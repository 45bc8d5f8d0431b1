"""`tenantllm --version`: the version written once, in pyproject.toml.

An installed copy (a wheel, or `pip install -e .`) reads it from its distribution's metadata,
which pip wrote from pyproject.toml. A checkout run without installing it (`python -m
core.cli` with the sources on PYTHONPATH) has no metadata, so it reads the checkout's
pyproject.toml itself. No second copy of the number exists to fall out of step.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import click

DISTRIBUTION = "tenantllm"
_PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def package_version() -> str:
    """This copy's version: its installed metadata, else the checkout's pyproject.toml."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return checkout_version(_PYPROJECT)


def checkout_version(pyproject: Path) -> str:
    """`[project].version` of `pyproject`, or "unknown" when it cannot be read."""
    try:
        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return "unknown"
    version = project.get("version")
    return version if isinstance(version, str) else "unknown"


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo(f"tenantllm {package_version()}")
    ctx.exit()


def add_version_option(group: click.Group) -> None:
    """Give `group` a `--version` flag (read when asked for, not at import)."""
    option = click.Option(
        ["--version"],
        is_flag=True,
        expose_value=False,
        is_eager=True,  # before the group's callback and before a subcommand is required
        callback=_print_version,
        help="Print the version and exit.",
    )
    group.params.append(option)
