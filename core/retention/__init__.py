"""Retention per team (issue 15, item 5): what is kept how long, and the job that applies it.

- `policy`: a team's policy (its plugin's `Tenant.retention_*_days`, or an admin's override
  in `retention_policies`), read and set;
- `run`: one pass over every team: delete conversations idle longer than the policy, drop
  prompt text from older audit rows (the chain stays verifiable, core/audit/chain.py), and
  audit what was removed, one `retention` event per team;
- `job`: the daily background task of the app (`tenantllm retention run` does one pass).
"""
