"""Usage for chargeback (issue 15, item 2), computed from the audit log. Exports nothing.

- `query`: `usage_rows` (tokens in/out, requests, distinct users per team or per member, per
  day or over the whole window) as one SQL GROUP BY on `audit_events` (SQLite and PostgreSQL).
- `export`: the same rows as CSV and JSON lines (the Usage tab's download, `tenantllm usage`).

What counts (the README says the same): one row per chat turn, `chat` (UI) or `api_chat`
(API), of a team, that reached the model (tokens_in + tokens_out > 0), whatever its outcome:
an answer (`ok`), one that failed mid-stream (`error`) or one stopped by the person
(`cancelled`) used the engine, and the budgets count those tokens too. A turn refused before
generation (denied, rate limited, over budget, too long) used no tokens and is not billed.
The audit log is the one source, so the numbers agree with it exactly.

Who sees what is decided by the caller's `rbac.allowed_tenants(principal, "read_usage")`,
passed to the query, which filters in SQL: an admin every team, a team admin their team.
"""
