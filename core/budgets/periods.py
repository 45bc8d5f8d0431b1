"""The periods a turn counts in: the UTC day and month, their keys and reset dates.

UTC for every team: all app replicas and the database agree on it without configuration,
and the reset date is always printed, so nobody has to guess the time zone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

Window = Literal["day", "month"]


@dataclass(frozen=True)
class Periods:
    """The day and the month that contain `now` (UTC)."""

    now: datetime

    @property
    def day(self) -> str:
        """The day's counter key, `2026-12-02`."""
        return self.now.strftime("%Y-%m-%d")

    @property
    def month(self) -> str:
        """The month's counter key, `2026-12`."""
        return self.now.strftime("%Y-%m")

    def key(self, window: Window) -> str:
        """The counter key of `window`."""
        return self.day if window == "day" else self.month

    def reset(self, window: Window) -> date:
        """The first day of the next period: when `window`'s budget is whole again."""
        today = self.now.date()
        if window == "day":
            return today + timedelta(days=1)
        return (today.replace(day=1) + timedelta(days=32)).replace(day=1)

    def seconds_to_reset(self, window: Window) -> int:
        """Seconds from now until `window` resets (at least 1)."""
        reset = datetime.combine(self.reset(window), datetime.min.time(), tzinfo=UTC)
        return max(1, int((reset - self.now).total_seconds()))

    def name(self, window: Window) -> str:
        """How a message names the period: `today (2 December)` or `December`."""
        if window == "day":
            return f"today ({day_month(self.now.date())})"
        return self.now.strftime("%B")


def day_month(day: date) -> str:
    """`1 January`: a date as a person reads it (no leading zero, any platform)."""
    return f"{day.day} {day.strftime('%B')}"
