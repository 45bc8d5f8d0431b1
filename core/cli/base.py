"""The `tenantllm` command group and the one place CLI errors become one clear line."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from core.datadir import restrict_umask
from core.errors import TenantLLMError

F = TypeVar("F", bound=Callable[..., Any])


@click.group()
def main() -> None:
    """tenantllm: several teams share one self-hosted LLM, safely."""
    restrict_umask()  # every file any command writes (database, stores, uploads) is 0600


def user_errors(func: F) -> F:
    """Print a `TenantLLMError` as one line on stderr and exit 1, without a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except TenantLLMError as exc:
            click.echo(f"error: {exc.message}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def configure_logging(level: str) -> None:
    """Plain console logging for CLI commands and the server."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
