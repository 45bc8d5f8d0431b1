"""Fair share of the one engine: token-fair admission of chat turns across teams.

- `fair_queue`: the policy (Virtual Token Counter), pure: no clock, no I/O.
- `scheduler`: `FairScheduler`, the asyncio face the chat turn waits on (wait bound, refusals).
- `redis_state`: what every app replica shares through Redis (team leases, the counters).
- `shared_places`: this replica's side of it (claims, lease renewal, counter sync, fallback).
- `weights`: each team's weight (the plugin's, or an admin's override in the database).
- `service_log`: the last hour per team (tokens served, queue waits, refusals) for the Admin page.
"""
