"""One chat turn for one tenant: the single request path of the UI, the API and the CLI.

- `request`: `ChatRequest`, what a caller asks for.
- `turn`: the turn itself (authorize, retrieve, prompt, generate, audit).
- `prompt`: preparing the turn's prompt (untrusted history, the question, the parameters,
  the fit), as pure functions of plain arguments.
- `injection`: prompt-injection signals that flag the audit event.
- `conversations`: saved conversations, per user and per team (tenant).

This `__init__` only documents: import the submodules themselves.
"""
