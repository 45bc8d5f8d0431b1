"""The alert consumer: the rules over the audit stream, alerts written back into it.

It is a consumer like the sinks (its own cursor, `alerts`), so every row is judged exactly
once and a restart resumes after the last judged row. An alert is an audit row (action
`alert`, flag `alert:<rule>`), appended to the chain BEFORE the cursor moves past the row
that triggered it, with an event id fixed by (rule, key, window): the chain writer skips an
id it already holds, so a crash between the two, or a second replica judging the same rows,
never stores an alert twice. The sinks then forward alert rows like any other.

After a restart the open windows are rebuilt from the rows just before the cursor (the
longest window's worth), without writing their alerts again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, cast

from core.audit.auditor import AuditEvent, Outcome, to_payload
from core.audit.query import AuditRecord
from core.audit.writer import append_batch
from core.siem.cursor import rows_between, stored_event_ids
from core.siem.document import ALERT_ACTION
from core.siem.rules import Alert, Rule, RuleState

log = logging.getLogger(__name__)
ALERTS_CURSOR = "alerts"


def _describe(alert: Alert) -> str:
    rule = alert.rule
    subject = alert.key.replace("|", ", ").replace(":", " ", 1)
    return (
        f"{rule.name}: {alert.count} {rule.what} by {subject} within {rule.window_seconds} s "
        f"(window from {alert.window_started:%Y-%m-%d %H:%M:%S}Z, threshold "
        f"{rule.threshold}; rows {alert.first_seq}..{alert.trigger.seq})"
    )


def alert_event(alert: Alert) -> AuditEvent:
    """The audit event of `alert`: who and where it is about, and why it fired."""
    trigger, key = alert.trigger, alert.key
    by_principal = key.startswith("principal:")
    by_team = key.startswith("team:") or "|team:" in key
    return AuditEvent(
        action=ALERT_ACTION,
        outcome=cast(Outcome, trigger.outcome),  # read back from a row the writer checked
        user_sub=trigger.user_sub if by_principal else None,
        user_email=trigger.user_email if by_principal else None,
        # About one team only when the key is; a principal across teams belongs to none.
        tenant_id=trigger.tenant_id if by_team else None,
        client_ip=trigger.client_ip if key.startswith("address:") or by_principal else None,
        user_agent=trigger.user_agent,
        request_id=trigger.request_id,
        status=trigger.status,
        error_class=trigger.error_class,
        flags=[f"alert:{alert.rule.name}", f"events={alert.count}"],
        detail=_describe(alert),
    )


def alert_payload(alert: Alert) -> dict[str, Any]:
    """The chain payload of `alert`, with its fixed event id."""
    payload = to_payload(alert_event(alert), keep_prompt_text=False)
    payload["event_id"] = alert.event_id
    return payload


class AlertConsumer:
    """Judges audit rows with the rules; writes an alert row per window that fires."""

    kind = "alerts"
    starts_at_head = True  # a new deployment's rules judge from now on, not the history

    def __init__(self, url: str, rules: list[Rule]) -> None:
        """A consumer over the audit log at `url`."""
        self.name = ALERTS_CURSOR
        self.url = url
        self.state = RuleState(rules)
        self._warm = False
        self.written = 0  # alert rows this process appended (a replay appends none)

    def deliver(self, records: Sequence[AuditRecord]) -> int:
        """Judge `records` in order; their alerts are stored when this returns."""
        if not records:
            return 0
        if not self._warm:
            self._warm_up(records[0])
        alerts = [a for record in records for a in self.state.feed(record)]
        if alerts:
            self.written += append_batch(self.url, [alert_payload(a) for a in alerts])
            for alert in alerts:
                log.warning("audit alert: %s", _describe(alert))
        return len(records)

    def _warm_up(self, first: AuditRecord) -> None:
        """Rebuild the open windows from the rows before `first`, without writing alerts.

        A window that crossed its threshold there but has no alert row (the rules were off
        then, or just turned on) stays armed: its next row fires, the storm is still on.
        """
        self._warm = True
        if first.seq <= 1 or not self.state.rules:
            return
        # Creation times follow seq only roughly (several writers): a minute of slack.
        since = first.created_at - timedelta(seconds=self.state.longest + 60)
        crossed = [
            a for r in rows_between(self.url, since, first.seq - 1) for a in self.state.feed(r)
        ]
        stored = stored_event_ids(self.url, [a.event_id for a in crossed])
        for alert in crossed:
            if alert.event_id not in stored:
                self.state.windows[(alert.rule.name, alert.key, alert.window_start)].fired = False

    def close(self) -> None:
        """Nothing to release."""
