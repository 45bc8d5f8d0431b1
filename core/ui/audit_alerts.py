"""The Audit tab's "Alerts" table: the anomaly alerts (core/siem/alerts.py) among the rows.

An alert is an audit row (action `alert`), so it is read with the tab's own filters,
narrowed to that action: the same authorization and scoping as every other row of the tab.
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd

from core.audit.query import AuditFilters, AuditRecord
from core.siem.document import ALERT_ACTION

ALERT_COLUMNS = ["time", "rule", "about", "team", "events", "what happened"]


def alert_filters(filters: AuditFilters) -> AuditFilters:
    """`filters` (already scoped to the caller) narrowed to alert rows."""
    return replace(filters, action=ALERT_ACTION, flagged_only=False)


def _flag(record: AuditRecord, prefix: str) -> str:
    return next((f[len(prefix) :] for f in record.flags if f.startswith(prefix)), "")


def alerts_view(rows: list[AuditRecord]) -> pd.DataFrame:
    """One line per alert, newest first: which rule, about whom, and its sentence."""
    return pd.DataFrame(
        [
            [
                r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                _flag(r, "alert:"),
                r.user_email or r.user_sub or r.client_ip or "",
                r.tenant_id or "—",
                _flag(r, "events="),
                r.detail or "",
            ]
            for r in rows
        ],
        columns=ALERT_COLUMNS,
    )
