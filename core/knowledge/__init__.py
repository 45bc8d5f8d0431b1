"""Per-tenant knowledge: a tenant's documents, from upload to retrieval.

- `service`: ingest, list, delete, re-index and retrieve a tenant's documents.
- `documents`: the document registry (one SQL row per stored document).
- `uploads`: checks on an uploaded file before anything parses it.
- `parsing`: file -> text parts, in a sandboxed worker process (time and memory limits).
- `chunking`: parsed parts -> embedded chunks carrying our own metadata.
- `vectorstore`: core's defaults for a tenant's vectors (embedding model, store, retriever).

The upload path is uploads -> parsing -> chunking -> vectorstore, driven by `service`.
This `__init__` only documents: import the submodules themselves.
"""
