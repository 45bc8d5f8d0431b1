"""The `tenantllm` command group and the one place CLI errors become one clear line."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from core.datadir import restrict_umask
from core.errors import TenantLLMError

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


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


def run_interruptible(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(coro)`, where Ctrl-C always ends as "interrupted" (exit 130).

    A terminal's Ctrl-C signals the whole foreground process group, so vLLM's engine process
    gets it too and dies at the same moment: the answer then fails with "the model stopped
    working" as often as it is cancelled. Whichever the command notices first, the person
    pressed Ctrl-C, and that is what they are told.
    """
    interrupted = False

    async def until_interrupted() -> T:
        nonlocal interrupted
        task = asyncio.current_task()
        assert task is not None

        def on_interrupt() -> None:
            nonlocal interrupted
            interrupted = True
            task.cancel()  # the command's own `finally` blocks still run (engine stop, audit)

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, on_interrupt)
        try:
            return await coro
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    try:
        return asyncio.run(until_interrupted())
    except BaseException:
        if interrupted:
            raise KeyboardInterrupt from None
        raise


def configure_logging(level: str) -> None:
    """Plain console logging for CLI commands and the server."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
