"""Token budgets per team and per member (issue 15, item 1). Exports nothing.

- `models`: the tables (`budgets`, `budget_counters`, `budget_reservations`; migration 0005).
- `periods`: the UTC day and month a turn counts in, their reset dates, and the wording.
- `limits`: `Limit` (one budget and what is used of it) and `Allowance` (what is left).
- `store`: `BudgetStore`, the face: reserve before a turn, settle after, what is left.
- `cache`: each team's budget rows kept in the process (a team without budgets costs a
  turn nothing), reloaded after `budget_cache_seconds` or at once after a change here.
- `counters`: the SQL of the counters (one UPSERT ... RETURNING for the four of a turn).
- `connections`: budget transactions that do not wait for the disk, and why that is safe.
- `seeding`: a budget first set mid-period starts from the audited usage of the period.
- `admin`: set and show budgets (admins; team admins for their members).

Order of evaluation for one turn of `subject` in `tenant`: the team's daily and monthly budget,
then the member's daily and monthly budget (the person's own override, else the team's
default for members). A turn reserves the most it can use (prompt + max_tokens, as OpenAI
counts max_tokens against a token limit) on every counter, atomically, and is refused when
any budget cannot hold it; when it ends, the reservation is replaced by what it used. So the
database is the truth for every app replica and a budget is never overspent.
"""
