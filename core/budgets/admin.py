"""Setting and showing budgets: what an admin (the `tenantllm budgets` command) does.

Who may call these is the caller's check (`require_budget_admin`, or `check_budget_change`
for one change); what is shown is decided here, in the query: `budget_report(url,
tenant_id)` reads only that team's rows.

A team admin (issue 15, item 3) manages budgets within what the admin gave the team: the
team's own daily and monthly budget is the admin's grant (`manage_team_budget`), and what a
team admin sets for members (a person's budget, or the default per member) may not exceed it
(`manage_member_budgets`), so delegating never raises what the team may spend.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from core.budgets.cache import changed
from core.budgets.models import TEAM, BudgetRow, CounterRow
from core.budgets.periods import Periods
from core.budgets.seeding import seed_counters
from core.db import session_scope, utcnow
from core.errors import InvalidRequest
from core.identity import Principal
from core.rbac import authorize

TEAM_FIELDS = ("daily", "monthly", "member_daily", "member_monthly")
MEMBER_FIELDS = ("daily", "monthly")
MAX_TOKENS = 10**15  # far above any real budget, far below BigInteger's limit


TEAM_GRANT = ("daily", "monthly")  # the team row's own budget: set by admins only
# A member budget and the team budget it must fit under.
_CEILING = {"daily": "daily", "monthly": "monthly", "member_daily": "daily",
            "member_monthly": "monthly"}  # fmt: skip


def require_budget_admin(principal: Principal) -> None:
    """Every team's budgets are shown and set by global admins (PermissionDenied otherwise)."""
    authorize(principal, None, "view_admin")


def check_budget_change(
    url: str,
    principal: Principal,
    tenant_id: str,
    changes: Mapping[str, int | None],
    *,
    user: str | None,
) -> None:
    """PermissionDenied or InvalidRequest unless `principal` may make this change.

    The team's own budget needs `manage_team_budget` (admins); member budgets need
    `manage_member_budgets` (admins, the team's team admins) and, for a team admin, must fit
    under the team's budget of the same period.
    """
    validate_changes(changes, user)
    if user is None and set(changes) & set(TEAM_GRANT):
        authorize(principal, tenant_id, "manage_team_budget")
        return
    authorize(principal, tenant_id, "manage_member_budgets")
    if principal.is_admin:
        return  # the admin is who grants: nothing above them to fit under
    with session_scope(url) as session:
        team = session.get(BudgetRow, (tenant_id, TEAM))
        grant = {name: getattr(team, name) if team else None for name in TEAM_GRANT}
    for name, value in changes.items():
        ceiling = grant[_CEILING[name]]
        # `off` is within the grant: a member without a budget is still held by the team's.
        if ceiling is not None and value is not None and value > ceiling:
            raise InvalidRequest(
                f"A member's {_CEILING[name]} budget must fit under the team's "
                f"{ceiling:,} tokens; only an admin can change the team's budget."
            )


@dataclass(frozen=True)
class BudgetStatus:
    """One budget row and what its subject used in the current day and month (UTC)."""

    tenant_id: str
    subject: str  # "*" for the team
    daily: int | None
    monthly: int | None
    member_daily: int | None
    member_monthly: int | None
    used_today: int
    used_this_month: int
    held_now: int  # reserved this month by turns running now
    updated_by: str
    updated_at: datetime

    def as_json(self) -> dict[str, object]:
        """A JSON-ready dict (one line of `budgets show --json`)."""
        row: dict[str, object] = {k: getattr(self, k) for k in self.__dataclass_fields__}
        row["scope"] = "team" if self.subject == TEAM else "member"
        row["updated_at"] = self.updated_at.isoformat()
        return row


def validate_changes(changes: Mapping[str, int | None], user: str | None) -> None:
    """InvalidRequest unless `changes` is a non-empty set of budget fields with sane values."""
    allowed = MEMBER_FIELDS if user is not None else TEAM_FIELDS
    if not changes:
        raise InvalidRequest("Give at least one budget: --daily, --monthly, --member-daily, ...")
    if user is not None and (not user.strip() or user == TEAM):
        raise InvalidRequest("--user needs a member's subject (as in the audit log) or key:<id>.")
    for name, value in changes.items():
        if name not in allowed:
            flag = "--" + name.replace("_", "-")
            raise InvalidRequest(f"{flag} is a team setting; with --user use --daily/--monthly.")
        if value is not None and not 0 <= value <= MAX_TOKENS:
            raise InvalidRequest(f"A budget is a number of tokens from 0 to {MAX_TOKENS:,}.")


def set_budget(
    url: str,
    tenant_id: str,
    changes: Mapping[str, int | None],
    *,
    user: str | None,
    actor: str,
) -> dict[str, int | None] | None:
    """Change the given fields of the team's budget (or of `user`'s override); None clears one.

    The other fields keep their values; a row left without any budget is deleted. Returns
    the budget as stored (None when it was deleted).
    """
    validate_changes(changes, user)
    subject = user if user is not None else TEAM
    try:
        with session_scope(url) as session:
            row = session.get(BudgetRow, (tenant_id, subject))
            values = {name: getattr(row, name) if row else None for name in TEAM_FIELDS}
            values.update(changes)
            if all(value is None for value in values.values()):
                if row is not None:
                    session.delete(row)
                return None
            if row is None:
                row = BudgetRow(tenant_id=tenant_id, subject=subject)
                session.add(row)
            for name, value in values.items():
                setattr(row, name, value)
            row.updated_by, row.updated_at = actor, utcnow()
            # A first budget mid-period starts from what was used so far, not from zero.
            seed_counters(session.connection(), tenant_id, row.updated_at)
        return values
    finally:  # after the commit: this process's cached budgets of `url` reload
        changed(url)


def budget_report(
    url: str, tenant_id: str | None, now: datetime | None = None
) -> list[BudgetStatus]:
    """Every budget row of `tenant_id` (None: of every team), with this period's usage."""
    periods = Periods(now or utcnow())
    query = select(BudgetRow).order_by(BudgetRow.tenant_id, BudgetRow.subject)
    counters = select(CounterRow).where(CounterRow.period.in_((periods.day, periods.month)))
    if tenant_id is not None:
        query = query.where(BudgetRow.tenant_id == tenant_id)
        counters = counters.where(CounterRow.tenant_id == tenant_id)
    with session_scope(url) as session:
        rows = list(session.scalars(query))
        usage = {(c.tenant_id, c.subject, c.period): c for c in session.scalars(counters)}
    return [
        _status(
            row,
            usage.get((row.tenant_id, row.subject, periods.day)),
            usage.get((row.tenant_id, row.subject, periods.month)),
        )
        for row in rows
    ]


def _status(row: BudgetRow, day: CounterRow | None, month: CounterRow | None) -> BudgetStatus:
    return BudgetStatus(
        tenant_id=row.tenant_id,
        subject=row.subject,
        daily=row.daily,
        monthly=row.monthly,
        member_daily=row.member_daily,
        member_monthly=row.member_monthly,
        used_today=day.used if day else 0,
        used_this_month=month.used if month else 0,
        held_now=month.reserved if month else 0,
        updated_by=row.updated_by,
        updated_at=row.updated_at,
    )
