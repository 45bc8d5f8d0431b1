"""Team adapters (issue 16, item 1): a LoRA adapter per team, trained on the serving model and
served by the one shared engine next to every other team's adapter and the base model.

- `pairs`: the training set a team admin hands in (JSON lines of prompt and completion),
  checked before anything is trained.
- `training`: fine-tuning with transformers + peft on the serving model, into a new folder.
- `models`: the `team_adapters` table (migration 0011).
- `registry`: the team's versions in SQL: register, list, activate, remove, and the active
  adapter's folder that a chat turn hands to the engine. Every query takes the team's id:
  nothing here can read or change another team's rows.
- `admin`: what `tenantllm adapters` does: who may, train-then-register, audited by the caller.

Where adapters live: `<data_dir>/tenants/<tenant_id>/adapters/<tenant_id>-v<N>-<8 hex>/`,
inside the team's own data directory. The folder name is never reused (across teams, nor
after a removal) because vLLM knows an adapter by it: a remote server serves the adapter as
a model of that name, loaded at its first turn (`/v1/load_lora_adapter`) or at the server's
start (`--lora-modules NAME=PATH`).
"""
