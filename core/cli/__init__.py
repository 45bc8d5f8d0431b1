"""Console entry point `tenantllm` (see `tenantllm --help`)."""

from core.cli import (  # noqa: F401  (registers commands)
    adapters,
    ask,
    audit,
    backup,
    budgets,
    db,
    eval,
    fairness,
    keys,
    knowledge,
    migrate,
    retention,
    serve,
    siem,
    usage,
)
from core.cli.base import main
from core.cli.version import add_version_option

add_version_option(main)

__all__ = ["main"]
