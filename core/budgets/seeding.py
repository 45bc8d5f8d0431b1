"""A budget set mid-period starts from what the audit log says was used so far.

Counters exist only while a budget applies (turns of a team without budgets count nothing),
so when a budget is first set on the 15th, the month's counters would start at zero and give
the team a fresh month. `seed_counters` runs in the transaction that stores the budget: every
counter of the current UTC day and month that does not exist yet (the team's, and each
member's who chatted in the team this month) starts at the tokens (prompt + completion) of
that team's and member's chat turns in that period, as audited. Counters that already exist
are kept: they have counted every turn since the team's first budget of the period.

A turn counts in the audit log as it counts in a budget (core/chat/turn.py settles prompt +
completion tokens if any token came back): an `ok` turn, or any turn with completion tokens.
A refusal carries the prompt's tokens in `tokens_in` but used nothing, so it is left out.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, or_, select

from core.audit.models import AuditEventRow
from core.budgets.counters import seed
from core.budgets.models import TEAM
from core.budgets.periods import Periods, Window

CHAT_ACTIONS = ("chat", "api_chat")


def _start(periods: Periods, window: Window) -> datetime:
    day = periods.now.date() if window == "day" else periods.now.date().replace(day=1)
    return datetime.combine(day, datetime.min.time(), tzinfo=UTC)


def audited_usage(
    conn: Connection, tenant_id: str, periods: Periods, window: Window
) -> dict[str, int]:
    """Tokens of each member's chat turns in `tenant_id` in the `window` containing now."""
    a = AuditEventRow.__table__.c
    end = datetime.combine(periods.reset(window), datetime.min.time(), tzinfo=UTC)
    query = (
        select(a.user_sub, func.sum(a.tokens_in + a.tokens_out))
        .where(
            a.tenant_id == tenant_id,
            a.created_at >= _start(periods, window),
            a.created_at < end,
            a.action.in_(CHAT_ACTIONS),
            or_(a.outcome == "ok", a.tokens_out > 0),
        )
        .group_by(a.user_sub)
    )
    return {sub: int(total or 0) for sub, total in conn.execute(query) if sub is not None}


def seed_counters(conn: Connection, tenant_id: str, now: datetime) -> None:
    """Create the current day's and month's missing counters of `tenant_id` from the audit."""
    periods = Periods(now)
    rows: list[dict[str, Any]] = []
    windows: tuple[Window, ...] = ("day", "month")
    for window in windows:
        usage = audited_usage(conn, tenant_id, periods, window)
        key = periods.key(window)
        rows.append({"tenant_id": tenant_id, "subject": TEAM, "period": key,
                     "used": sum(usage.values())})  # fmt: skip
        rows += [
            {"tenant_id": tenant_id, "subject": sub, "period": key, "used": used}
            for sub, used in usage.items()
            if sub != TEAM
        ]
    seed(conn, rows)
