"""What a budget allows: `Limit` (one budget and its counter), `Allowance`, the refusal text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from core.budgets.periods import Periods, Window, day_month
from core.errors import BudgetExceeded

Scope = Literal["team", "member"]


@dataclass(frozen=True)
class Limit:
    """One budget that applies to a turn, and how much of it is used or held right now."""

    scope: Scope
    window: Window
    limit: int
    used: int
    reserved: int

    @property
    def remaining(self) -> int:
        """Tokens a new turn may still reserve (never negative)."""
        return max(0, self.limit - self.used - self.reserved)


@dataclass(frozen=True)
class Allowance:
    """Every budget that applies to one member of one team, at one moment."""

    team_name: str
    periods: Periods
    limits: tuple[Limit, ...] = ()

    def tightest(self, scope: Scope | None = None) -> Limit | None:
        """The budget with the least left (of `scope`, or of all); None without budgets."""
        chosen = [lim for lim in self.limits if scope is None or lim.scope == scope]
        return min(chosen, key=lambda lim: lim.remaining, default=None)

    def remaining(self, scope: Scope | None = None) -> int | None:
        """Tokens left under the tightest budget (of `scope`); None: no budget applies."""
        tightest = self.tightest(scope)
        return None if tightest is None else tightest.remaining

    def summary(self) -> str:
        """One line for people: `You: 9,000 tokens left today · Sales: 1,200,000 tokens left in
        December`."""
        parts = []
        for scope, who in (("member", "You"), ("team", self.team_name)):
            lim = self.tightest(scope)  # type: ignore[arg-type]
            if lim is not None:
                when = "today" if lim.window == "day" else f"in {self.periods.name('month')}"
                parts.append(f"{who}: {lim.remaining:,} tokens left {when}")
        return " · ".join(parts)


def refusal(limit: Limit, team_name: str, periods: Periods, needed: int) -> BudgetExceeded:
    """The error for a turn that `limit` cannot hold: who, which period, when it resets."""
    who, its = ("you", "your") if limit.scope == "member" else (team_name, "its")
    period = periods.name(limit.window)
    reset = day_month(periods.reset(limit.window))
    if limit.remaining == 0:
        has = "have" if limit.scope == "member" else "has"
        text = f"{who} {has} used {its} {limit.limit:,} tokens for {period}; resets on {reset}."
    else:
        text = (
            f"This request may use up to {needed:,} tokens (the prompt and the longest answer "
            f"asked for), but {who} {'have' if limit.scope == 'member' else 'has'} only "
            f"{limit.remaining:,} of {its} {limit.limit:,} tokens for {period} left; a shorter "
            f"question or answer may fit, or wait until {reset}."
        )
    return BudgetExceeded(
        text[0].upper() + text[1:],
        retry_after=periods.seconds_to_reset(limit.window),
        remaining=limit.remaining,
    )
