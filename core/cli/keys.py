"""CLI commands (being written; see docs/CONTRACTS.md)."""

from core.cli.base import main  # noqa: F401
