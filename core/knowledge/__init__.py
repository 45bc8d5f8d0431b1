"""Per-tenant knowledge: a tenant's documents, from upload to retrieval.

- `service`: `KnowledgeService`, the face the rest of core uses (ingest, list, delete,
  re-index, retrieve); it hands each call to one of the modules below.
- `tenant_files`: where a tenant's knowledge lives on disk, and its encrypted originals.
- `originals`: where the encrypted originals are kept, one module per backend:
  `originals_files` (the data dir), `originals_sql` (the SQL database, every replica).
- `indexes`: each tenant's vector and keyword indexes, opened once per process.
- `ingestion`: the upload path (check, de-duplicate, quota, parse, chunk, store) and re-indexing.
- `retrieval`: a question -> the tenant's most relevant chunks, as sources (hybrid: dense and
  BM25 fused by reciprocal rank fusion).
- `keyword`: the tenant's BM25 index (bm25s), beside its vectors in its own directory.
- `evaluation`: a labelled question set -> hit@k, MRR and nDCG@k of the tenant's retrieval.
- `demo`: the demo documents shipped in `assets/demo_docs/`.
- `documents`: the document registry (one SQL row per stored document).
- `uploads`: checks on an uploaded file before anything parses it.
- `parsing`: file -> text parts, in a sandboxed worker process (time and memory limits).
- `chunking`: parsed parts -> embedded chunks carrying our own metadata.
- `vectorstore`: core's defaults for a tenant's vectors (embedding model, store, retriever).
- `chroma_server`: a team's vectors on a Chroma server, in its own database there.
- `jobs`, `ingest_worker`: uploads indexed in the background, one job row per file, and the
  worker that runs them; `job_progress` and `embed_progress` report a job's progress;
  `job_staging` keeps a queued upload's encrypted copy where the originals are.
- `passages`: a cited chunk's passage, for the chat's citations.
- `embeddings`, `onnx_embedding`, `embedding_export`: the embedding model, on ONNX Runtime
  when its one-time export exists, else on torch.

The upload path is uploads -> parsing -> chunking -> vectorstore, driven by `ingestion`.
This `__init__` only documents: import the submodules themselves.
"""
