"""Usage rows as CSV (the Usage tab's download, `tenantllm usage --csv`) and as JSON lines.

The CSV has one header row and the same columns in every export, so a spreadsheet or a
chargeback script reads any of them; cells go through the audit export's `csv_cell`, so a
member's email can never run as a formula.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from typing import IO

from core.audit.query import csv_cell
from core.usage.query import UsageRow

CSV_COLUMNS = ["day", "team", "user", "email", "tokens_in", "tokens_out", "tokens", "requests",
               "users"]  # fmt: skip


def as_dict(row: UsageRow) -> dict[str, object]:
    """One row under the CSV's column names (JSON-ready)."""
    return {
        "day": row.day,
        "team": row.tenant_id,
        "user": row.user,
        "email": row.email,
        "tokens_in": row.tokens_in,
        "tokens_out": row.tokens_out,
        "tokens": row.tokens,
        "requests": row.requests,
        "users": row.users,
    }


def write_csv(rows: Iterable[UsageRow], stream: IO[str]) -> int:
    """Write `rows` as CSV with a header row; how many rows."""
    writer = csv.writer(stream)
    writer.writerow(CSV_COLUMNS)
    count = 0
    for row in rows:
        values = as_dict(row)
        writer.writerow([csv_cell(values[name]) for name in CSV_COLUMNS])
        count += 1
    return count


def csv_text(rows: Iterable[UsageRow]) -> str:
    """`rows` as CSV text."""
    buffer = io.StringIO()
    write_csv(rows, buffer)
    return buffer.getvalue()


def json_lines(rows: Iterable[UsageRow]) -> Iterable[str]:
    """One JSON object per row."""
    return (json.dumps(as_dict(row)) for row in rows)
