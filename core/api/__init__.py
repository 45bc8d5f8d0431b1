"""The OpenAI-compatible HTTP API (`/v1/...`): the edge where domain errors become HTTP.

- `routes`: the FastAPI router (`/v1/models`, `/v1/chat/completions`).
- `schemas`: request and response models (OpenAI shape plus the `tenantllm` extension).
- `stream`: server-sent events for streamed completions.
- `errors`: the OpenAI error body and the route class that translates domain errors.
- `body`: the request body size limit.

This `__init__` only documents: import the submodules themselves.
"""
