"""The app's retention job: one pass shortly after start, then every interval.

Shortly after start, not an interval after: a deployment restarted more often than the
interval would otherwise never apply its policy. Several replicas may each run it: every
pass is idempotent (what is gone stays gone), so at worst a pass finds nothing to remove.
The pass runs in a thread: its deletes are blocking database work.
"""

from __future__ import annotations

import asyncio
import logging

from core.retention.run import apply_retention
from core.services import Services

log = logging.getLogger(__name__)

ACTOR = "system:retention"


async def retention_loop(services: Services, interval_seconds: float, first_delay: float) -> None:
    """Run retention passes forever (until cancelled); a failed pass is logged, not fatal."""
    await asyncio.sleep(first_delay)
    while True:
        try:
            await asyncio.to_thread(apply_retention, services, actor=ACTOR)
        except Exception:  # the next pass tries again; the app keeps serving meanwhile
            log.exception("retention pass failed")
        await asyncio.sleep(interval_seconds)


def start_retention_job(services: Services) -> asyncio.Task[None] | None:
    """Start the loop of `services.settings` (None when the interval is 0: no job)."""
    hours = services.settings.retention_interval_hours
    if hours <= 0:
        return None
    interval = hours * 3600.0
    first = min(interval, services.settings.retention_first_delay_seconds)
    return asyncio.create_task(retention_loop(services, interval, first), name="retention")
