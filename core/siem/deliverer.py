"""Delivery: each consumer with its cursor and backoff, and `SiemRunner`, all of them.

`Deliverer.run_once` reads the rows after the consumer's cursor, hands them over batch by
batch and advances the cursor past what was acknowledged, until caught up or a receiver
fails; a failure is stored on the cursor (the status shows it) and the next try waits
`2^failures` seconds, capped at `Settings.siem_retry_max_seconds`.

`SiemRunner` owns every consumer of one deployment: the alert rules first (so the alerts
they write go out in the same round), then the sinks, then the alert webhook. The web app
runs it as a background task (`start`/`stop`, from the lifespan); `tenantllm siem deliver`
runs `deliver_all` from cron. Several deliverers of one sink (app replicas, a cron job
beside the app) can send a batch twice, never skip one: the cursor moves by compare-and-set.
Run it in one place (`TENANTLLM_SIEM_IN_APP=false` elsewhere) to avoid the duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from sqlalchemy.exc import SQLAlchemyError

from core.config import Settings
from core.siem import cursor
from core.siem.alerts import AlertConsumer
from core.siem.errors import DeliveryFailed
from core.siem.http_sinks import WebhookSink
from core.siem.rules import rules_from_settings
from core.siem.sinks import Sink, build_sinks, tls_context

log = logging.getLogger(__name__)
MAX_BATCHES_PER_ROUND = 20  # then the next consumer gets its turn
_FAILURES = (DeliveryFailed, OSError, httpx.HTTPError)


@dataclass(frozen=True)
class RoundResult:
    """What one round of one consumer did."""

    name: str
    delivered: int
    last_seq: int
    error: str | None = None
    skipped: bool = False  # still backing off from an earlier failure


class Deliverer:
    """One consumer and its cursor: delivers in order, advances on acknowledgement only."""

    def __init__(
        self,
        url: str,
        consumer: Sink,
        settings: Settings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Deliver the audit log at `url` to `consumer`."""
        self.url = url
        self.consumer = consumer
        self.batch_size = settings.siem_batch_size
        self.retry_max = settings.siem_retry_max_seconds
        self.clock = clock
        self.failures = 0
        self.next_try = 0.0

    def run_once(self, *, force: bool = False, max_batches: int | None = None) -> RoundResult:
        """Deliver what is pending (all of it, or `max_batches`), unless backing off."""
        name = self.consumer.name
        seq = self._position()
        if not force and self.clock() < self.next_try:
            return RoundResult(name, 0, seq, skipped=True)
        delivered, batches = 0, 0
        while max_batches is None or batches < max_batches:
            rows = cursor.rows_after(self.url, seq, self.batch_size)
            if not rows:
                break
            batches += 1
            try:
                acknowledged = self.consumer.deliver(rows)
            except _FAILURES as exc:
                return self._failed(seq, delivered, f"{type(exc).__name__}: {exc}")
            except SQLAlchemyError:
                raise  # the audit database itself: the caller's problem, not this sink's
            except Exception as exc:  # a sink's bug must not stop the other sinks
                log.exception("siem: %s raised", name)
                return self._failed(seq, delivered, f"{type(exc).__name__}: {exc}")
            if acknowledged > 0:
                done = rows[acknowledged - 1].seq
                if not cursor.advance(self.url, name, seq, done, acknowledged):
                    seq = self._position()
                    continue  # another deliverer moved it: go on from there
                seq, delivered = done, delivered + acknowledged
            if acknowledged < len(rows):
                return self._failed(seq, delivered, f"receiver took {acknowledged} of {len(rows)}")
        self.failures, self.next_try = 0, 0.0
        return RoundResult(name, delivered, seq)

    def _position(self) -> int:
        consumer = self.consumer
        return cursor.ensure_cursor(
            self.url, consumer.name, consumer.kind, at_head=consumer.starts_at_head
        )

    def _failed(self, seq: int, delivered: int, error: str) -> RoundResult:
        self.failures += 1
        delay = min(2.0 ** min(self.failures, 30), self.retry_max)
        self.next_try = self.clock() + delay
        cursor.record_failure(self.url, self.consumer.name, error)
        log.warning("siem: %s failed (%s); retry in %.0f s", self.consumer.name, error, delay)
        return RoundResult(self.consumer.name, delivered, seq, error)


def build_consumers(settings: Settings) -> list[Sink]:
    """The alert rules (when on), every configured sink, the alert webhook (when set)."""
    consumers: list[Sink] = []
    if settings.alerts_enabled:
        rules = rules_from_settings(settings)
        consumers.append(AlertConsumer(settings.resolved_database_url, rules))
    consumers.extend(build_sinks(settings))
    if settings.alert_webhook_url:
        url = settings.alert_webhook_url
        verify = tls_context(settings) if url.startswith("https://") else False
        consumers.append(WebhookSink("alert-webhook", url, verify, settings.siem_timeout_seconds))
    return consumers


class SiemRunner:
    """Every consumer of one deployment's audit log, run in rounds."""

    def __init__(self, settings: Settings) -> None:
        """Consumers of `settings` (ConfigError for a sink URL it does not understand)."""
        self.settings = settings
        self.url = settings.resolved_database_url
        self.deliverers = [Deliverer(self.url, c, settings) for c in build_consumers(settings)]
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def deliver_all(self, *, force: bool = False) -> list[RoundResult]:
        """One round: each consumer delivers what is pending (a bounded amount each)."""
        return [d.run_once(force=force, max_batches=MAX_BATCHES_PER_ROUND) for d in self.deliverers]

    def _round(self) -> None:
        try:
            self.deliver_all()
        except SQLAlchemyError as exc:  # the audit database is down: the next round retries
            log.warning("siem: audit database unavailable (%s)", type(exc).__name__)
        except Exception:  # the task must outlive any bug, or delivery stops in silence
            log.exception("siem: delivery round failed; the next round retries")

    async def _loop(self) -> None:
        while not self._stop.is_set():
            await asyncio.to_thread(self._round)
            with contextlib.suppress(TimeoutError):  # the poll interval passed: next round
                await asyncio.wait_for(self._stop.wait(), self.settings.siem_poll_seconds)

    async def start(self) -> None:
        """Run rounds in the background (the app's lifespan), if there is anything to run."""
        if not self.deliverers or not self.settings.siem_in_app:
            return
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="siem-deliverer")

    async def stop(self) -> None:
        """Finish the round under way, then stop; close every sink."""
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
        self.close()

    def close(self) -> None:
        """Close every sink's connections."""
        for deliverer in self.deliverers:
            deliverer.consumer.close()
