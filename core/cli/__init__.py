"""Console entry point `tenantllm` (see `tenantllm --help`)."""

from core.cli import ask, audit, budgets, db, eval, keys, knowledge, serve, siem  # noqa: F401  (registers commands)
from core.cli.base import main

__all__ = ["main"]
