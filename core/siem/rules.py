"""The anomaly rules over the audit stream, counted in tumbling windows.

Each rule turns a row into hits (a key such as `principal:alice` or `address:10.0.0.7`, a
weight, for distinct counting a member); hits are summed per (rule, key, window), windows
being fixed UTC-aligned spans of the rule's length (`floor(time / length)`). A window fires
once, when its count reaches the threshold, so an alert is a function of the rows alone:
replaying them (a restarted consumer, a second replica) gives the same alerts with the same
ids. The price of fixed windows: a burst split by a window boundary counts in two halves.

Alerts never feed rules (`alert` rows are skipped). Refusal summary rows (core/audit/
refusals.py: flag `count=N`) weigh N, so a flood aggregated into one row still counts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from limits import parse

from core.audit.query import AuditRecord
from core.config import Settings
from core.siem.document import ALERT_ACTION


@dataclass(frozen=True)
class Hit:
    """One row's contribution to a rule's window for `key`."""

    key: str
    weight: int = 1
    member: str | None = None  # set: the rule counts distinct members (teams) instead


@dataclass(frozen=True)
class Rule:
    """One anomaly rule: fires when a key's hits in one window reach `threshold`."""

    name: str
    threshold: int
    window_seconds: int
    hits: Callable[[AuditRecord], list[Hit]]
    what: str  # what is counted, for the alert's text ("denied requests")


@dataclass
class Window:
    """The count of one (rule, key, window start) and the rows it saw."""

    count: int = 0
    members: set[str] = field(default_factory=set)
    first_seq: int = 0
    fired: bool = False


@dataclass(frozen=True)
class Alert:
    """A rule that fired: which key, which window, on which row."""

    rule: Rule
    key: str
    window_start: int  # epoch seconds, UTC
    count: int
    first_seq: int
    trigger: AuditRecord

    @property
    def event_id(self) -> str:
        """The alert row's event id: the same for the same window, so it is stored once."""
        text = f"alert|{self.rule.name}|{self.key}|{self.window_start}"
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]

    @property
    def window_started(self) -> datetime:
        """The window's start as a UTC time."""
        return datetime.fromtimestamp(self.window_start, UTC)


def weight(record: AuditRecord) -> int:
    """How many events a row stands for (a refusal summary's `count=N`, else 1)."""
    for flag in record.flags:
        if flag.startswith("count=") and flag[6:].isdigit():
            return max(1, int(flag[6:]))
    return 1


def principal_of(record: AuditRecord) -> str | None:
    """The row's principal (subject, else email), or None."""
    return record.user_sub or record.user_email


def is_bad_credential(record: AuditRecord) -> bool:
    """A refused credential (unknown, expired or revoked key or token; failed sign-in)."""
    return record.outcome == "denied" and (
        record.status == 401 or record.error_class == "NotAuthenticated"
    )


def _denials(record: AuditRecord) -> list[Hit]:
    if record.outcome != "denied" or is_bad_credential(record):
        return []
    hits = [Hit(f"principal:{p}", weight(record)) for p in [principal_of(record)] if p]
    if record.client_ip:
        hits.append(Hit(f"address:{record.client_ip}", weight(record)))
    return hits


def _bad_credentials(record: AuditRecord) -> list[Hit]:
    if not is_bad_credential(record):
        return []
    return [Hit(f"address:{record.client_ip or 'unknown'}", weight(record))]


def _injection(record: AuditRecord) -> list[Hit]:
    if not any(f.startswith("prompt_injection:") for f in record.flags):
        return []
    who = principal_of(record) or f"address {record.client_ip or 'unknown'}"
    return [Hit(f"principal:{who}|team:{record.tenant_id or '-'}")]


def _many_teams(record: AuditRecord) -> list[Hit]:
    principal = principal_of(record)
    if not principal or not record.tenant_id:
        return []
    return [Hit(f"principal:{principal}", member=record.tenant_id)]


def _rate_limits(record: AuditRecord) -> list[Hit]:
    if record.outcome != "rate_limited":
        return []
    return [Hit(f"team:{record.tenant_id or '-'}", weight(record))]


def off_hours(hours: str, moment: datetime) -> bool:
    """Whether `moment` is outside office hours `HH-HH` (UTC, end exclusive, may wrap)."""
    start, end = (int(h) for h in hours.split("-"))
    hour = moment.astimezone(UTC).hour
    inside = start <= hour < end if start <= end else hour >= start or hour < end
    return not inside


def _off_hours_admin(settings: Settings) -> Callable[[AuditRecord], list[Hit]]:
    actions = frozenset(settings.alert_admin_actions)

    def hits(record: AuditRecord) -> list[Hit]:
        if record.action not in actions or not off_hours(
            settings.alert_office_hours_utc, record.created_at
        ):
            return []
        return [Hit(f"principal:{principal_of(record) or record.client_ip or 'unknown'}")]

    return hits


def _rule(name: str, spec: str, hits: Callable[[AuditRecord], list[Hit]], what: str) -> Rule:
    item = parse(spec)
    return Rule(name, int(item.amount), int(item.get_expiry()), hits, what)


def rules_from_settings(settings: Settings) -> list[Rule]:
    """The rules that are on (a threshold setting left empty turns its rule off)."""
    specs = [
        ("repeated_denials", settings.alert_denials, _denials, "denied requests"),
        ("bad_credentials", settings.alert_bad_credentials, _bad_credentials,
         "refused credentials"),
        ("prompt_injection", settings.alert_injection, _injection, "flagged prompts"),
        ("many_teams", settings.alert_many_teams, _many_teams, "teams touched"),
        ("rate_limit_storm", settings.alert_rate_limits, _rate_limits,
         "rate-limited or over-budget requests"),
    ]  # fmt: skip
    rules = [_rule(name, spec, hits, what) for name, spec, hits, what in specs if spec]
    if settings.alert_office_hours_utc:
        rules.append(Rule("off_hours_admin", 1, 3600, _off_hours_admin(settings), "admin actions"))
    return rules


class RuleState:
    """The open windows of every rule; `feed` rows in `seq` order and collect the alerts."""

    def __init__(self, rules: list[Rule]) -> None:
        """State for `rules`, empty."""
        self.rules = rules
        self.windows: dict[tuple[str, str, int], Window] = {}
        self.longest = max((r.window_seconds for r in rules), default=0)
        self._newest = 0.0

    def feed(self, record: AuditRecord) -> list[Alert]:
        """Count `record` in every rule's window; the alerts whose threshold it reached."""
        if record.action == ALERT_ACTION:
            return []
        moment = record.created_at.timestamp()
        alerts = [a for rule in self.rules for a in self._count(rule, record, moment)]
        if moment > self._newest + 60:
            self._newest = moment
            self._forget_before(moment - self.longest - 300)
        return alerts

    def _count(self, rule: Rule, record: AuditRecord, moment: float) -> list[Alert]:
        start = int(moment // rule.window_seconds) * rule.window_seconds
        fired = []
        for hit in rule.hits(record):
            window = self.windows.setdefault((rule.name, hit.key, start), Window())
            window.first_seq = window.first_seq or record.seq
            if hit.member is None:
                window.count += hit.weight
            else:
                window.members.add(hit.member)
                window.count = len(window.members)
            if not window.fired and window.count >= rule.threshold:
                window.fired = True
                fired.append(Alert(rule, hit.key, start, window.count, window.first_seq, record))
        return fired

    def _forget_before(self, horizon: float) -> None:
        # Windows that ended long ago; a late row for one of them starts it anew, and its
        # alert, if any, carries the same id and is stored only once.
        rules = {r.name: r for r in self.rules}
        for key in [k for k in self.windows if k[2] + rules[k[0]].window_seconds < horizon]:
            del self.windows[key]
