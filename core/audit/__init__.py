"""The audit log: every chat turn, sign-in, key change and refusal, hash-chained.

- `auditor`: `AuditEvent` and `Auditor`, the one entry point the rest of core/ calls.
- `models`: the `audit_events` table.
- `writer`: the background writer that appends rows in order and links the hash chain.
- `spool`: the on-disk spool that holds events while the database is unreachable.
- `chain`: the hash chain (payload -> row, verification).
- `query`: filters and paging for the admin tab and the CLI.
- `refusals`: refused credentials, rate-limited so a flood becomes a few rows.

This `__init__` only documents: import the submodules themselves.
"""
