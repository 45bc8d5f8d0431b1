"""`tenantllm siem status|deliver`: where each SIEM sink stands, and delivery from cron.

`status` prints, per consumer (the alert rules, every sink of `TENANTLLM_SIEM_SINKS`, the
alert webhook), its cursor, the rows and seconds it is behind and its last failure; no
audit row's content. `deliver --once` delivers everything pending and exits (1 when a sink
failed: cron mails it); without `--once` it keeps delivering until Ctrl-C, as the web app's
background task does (`TENANTLLM_SIEM_IN_APP=false` there, to run it in one place only).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from core.cli.base import main, user_errors
from core.config import load_settings
from core.db import upgrade_database
from core.errors import ConfigError
from core.siem.deliverer import RoundResult, SiemRunner
from core.siem.status import consumer_statuses, summary_line


@contextmanager
def _runner() -> Iterator[SiemRunner]:
    """The configured consumers over the migrated database; sinks closed afterwards."""
    settings = load_settings()
    url = settings.resolved_database_url
    runner = SiemRunner(settings)
    try:
        upgrade_database(url)
        yield runner
    except SQLAlchemyError as exc:
        shown = make_url(url).render_as_string(hide_password=True)
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"The audit database at {shown} is unavailable: {first_line}") from None
    finally:
        runner.close()


@main.group()
def siem() -> None:
    """Audit events to the SIEM: delivery lag and delivery."""


@siem.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per consumer.")
@user_errors
def status(as_json: bool) -> None:
    """Each sink's cursor, how many rows and seconds it is behind, its last failure."""
    with _runner() as runner:
        statuses = consumer_statuses(runner)
    if not statuses:
        click.echo("no SIEM sinks configured and alerts off", err=True)
    for item in statuses:
        click.echo(json.dumps(item.as_json()) if as_json else summary_line(item))


def _report(results: list[RoundResult]) -> bool:
    """Print one line per consumer that did something or failed; True when none failed."""
    for result in results:
        if result.error:
            click.echo(f"{result.name}: failed at seq {result.last_seq}: {result.error}", err=True)
        elif result.delivered:
            click.echo(f"{result.name}: delivered {result.delivered}, at seq {result.last_seq}")
    return not any(r.error for r in results)


@siem.command("deliver")
@click.option("--once", is_flag=True, help="Deliver what is pending, then exit (for cron).")
@user_errors
def deliver(once: bool) -> None:
    """Deliver pending audit rows to every sink (and judge them with the alert rules)."""
    with _runner() as runner:
        if once:
            results = [d.run_once(force=True) for d in runner.deliverers]
            if not _report(results):
                sys.exit(1)
            return
        while True:  # until Ctrl-C (exit 130, see user_errors); failing sinks back off
            _report(runner.deliver_all())
            time.sleep(runner.settings.siem_poll_seconds)
