"""A tenant's keyword index: BM25 (bm25s) over the tenant's own chunks, beside its vectors.

    <tenant dir>/bm25/CURRENT                  the name of the live generation
    <tenant dir>/bm25/<generation>/chunks.jsonl  the chunks: node id, text, our metadata
    <tenant dir>/bm25/<generation>/*.index.*   bm25s's index of those texts

bm25s has no incremental update, so every change (an upload, a delete, a re-index) rebuilds
the index from the chunk list held in memory and writes a new generation; CURRENT is then
switched with an atomic rename, so a crash leaves the previous index whole. Several processes
may share a data dir (the server and `tenantllm ingest`): writers take a file lock and start
from the live generation, and readers reload when CURRENT names a newer one. The chunks are
the ones the vector store holds, with the same node ids: that is what lets retrieval fuse
the two rankings. Like the vectors, the index lives only in the tenant's own directory, and
one index never holds another tenant's chunks (`add` refuses them).
"""

from __future__ import annotations

import fcntl
import importlib
import json
import logging
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import Stemmer

from core.knowledge.chunking import DOCUMENT_KEY, TENANT_KEY

if TYPE_CHECKING:
    from llama_index.core.schema import BaseNode, NodeWithScore


def _import_bm25s() -> ModuleType:
    """bm25s, on its numpy backend, with numba kept out of this process.

    bm25s imports numba whenever it is installed (vLLM installs it), and numba brings
    llvmlite, whose objects crash vLLM's CPU worker start in the same process (vLLM's kernel
    rebinding walks every loaded module: "'_lib_fn_wrapper' object has no attribute 'get'").
    So numba is hidden while bm25s loads: its numpy backend is fast enough here (BM25 is ~2 ms
    of a ~25 ms retrieval). tests/test_retrieval_hybrid.py checks that llvmlite stays out.
    """
    hidden = "numba" not in sys.modules
    if hidden:
        sys.modules["numba"] = None  # type: ignore[assignment]  # `import numba` -> ImportError
    try:
        return importlib.import_module("bm25s")
    finally:
        if hidden:
            del sys.modules["numba"]


if TYPE_CHECKING:
    import bm25s
else:
    bm25s = _import_bm25s()
# bm25s sets its own logger to DEBUG on import: one line per rebuild in every log otherwise.
logging.getLogger("bm25s").setLevel(logging.WARNING)

CURRENT = "CURRENT"
CHUNKS_FILE = "chunks.jsonl"
_LOCK_FILE = ".lock"
_KEEP_GENERATIONS = 2  # the live one and its predecessor, which a reader may still be loading
# English stemming and stop words: "policies" finds "policy", "the" finds nothing.
_LANGUAGE = "english"
_STOPWORDS = "en"


@dataclass(frozen=True)
class KeywordChunk:
    """One chunk as the keyword index keeps it (the same id and metadata as its vector)."""

    node_id: str
    text: str
    metadata: dict[str, Any]

    @classmethod
    def from_node(cls, node: BaseNode) -> KeywordChunk:
        """The keyword record of a llama-index node (its text without metadata)."""
        from llama_index.core.schema import MetadataMode

        text = node.get_content(metadata_mode=MetadataMode.NONE)
        return cls(node_id=node.node_id, text=text, metadata=dict(node.metadata))


class KeywordIndex:
    """The BM25 index of one tenant's chunks, persisted in `directory`."""

    def __init__(self, tenant_id: str, directory: Path) -> None:
        self.tenant_id = tenant_id
        self.directory = directory
        self._lock = threading.Lock()
        # PyStemmer's stemmers are not thread-safe: this one is used under the lock only.
        self._stemmer = Stemmer.Stemmer(_LANGUAGE)
        self._chunks: list[KeywordChunk] = []
        self._bm25: bm25s.BM25 | None = None
        self._generation: str | None = None
        with self._lock:
            self._refresh()

    def exists(self) -> bool:
        """True once an index (even an empty one) has been written for this tenant."""
        return (self.directory / CURRENT).is_file()

    def __len__(self) -> int:
        with self._lock:
            self._refresh()
            return len(self._chunks)

    def add(self, nodes: Sequence[BaseNode]) -> None:
        """Index `nodes` too (all must be this tenant's chunks)."""
        new = [KeywordChunk.from_node(n) for n in nodes]
        for chunk in new:
            if chunk.metadata.get(TENANT_KEY) != self.tenant_id:
                raise ValueError(f"chunk {chunk.node_id} is not {self.tenant_id}'s")
        ids = {c.node_id for c in new}
        with self._writing():
            kept = [c for c in self._chunks if c.node_id not in ids]
            self._rebuild(kept + new)

    def remove_document(self, document_id: str) -> None:
        """Forget every chunk of one document (nothing happens if it has none here)."""
        with self._writing():
            kept = [c for c in self._chunks if c.metadata.get(DOCUMENT_KEY) != document_id]
            if len(kept) != len(self._chunks) or not self.exists():
                self._rebuild(kept)

    def replace(self, nodes: Iterable[BaseNode]) -> None:
        """Index exactly `nodes`, dropping everything else (re-index, first opening)."""
        chunks = [KeywordChunk.from_node(n) for n in nodes]
        chunks = [c for c in chunks if c.metadata.get(TENANT_KEY) == self.tenant_id]
        with self._writing():
            self._rebuild(chunks)

    def search(self, query: str, k: int) -> list[NodeWithScore]:
        """The `k` best BM25 matches for `query`, best first; chunks with no match left out."""
        from llama_index.core.schema import NodeWithScore, TextNode

        with self._lock:
            self._refresh()
            if self._bm25 is None or not self._chunks:
                return []
            tokens = self._tokenize([query])[0]
            # Both are replaced on change, never mutated: scoring can leave the lock.
            bm25, chunks = self._bm25, self._chunks
        known = [t for t in tokens if t in bm25.vocab_dict]
        if not known:
            return []
        scores = bm25.get_scores(known)
        best = np.argsort(-scores, kind="stable")[:k]
        return [
            NodeWithScore(
                node=TextNode(
                    id_=chunks[i].node_id, text=chunks[i].text, metadata=chunks[i].metadata
                ),
                score=float(scores[i]),
            )
            for i in best
            if scores[i] > 0
        ]

    def _tokenize(self, texts: list[str]) -> list[list[str]]:
        tokens = bm25s.tokenize(
            texts,
            stopwords=_STOPWORDS,
            stemmer=self._stemmer,
            return_ids=False,
            show_progress=False,
        )
        return [list(t) for t in tokens]

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """This process's lock and the directory's file lock, from the live generation on."""
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            with (self.directory / _LOCK_FILE).open("a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
                self._refresh()
                yield

    def _rebuild(self, chunks: list[KeywordChunk]) -> None:
        """Index `chunks`, write them as a new generation, then make it the live one."""
        bm25 = None
        if chunks:
            bm25 = bm25s.BM25()
            bm25.index(self._tokenize([c.text for c in chunks]), show_progress=False)
        generation = self._write(chunks, bm25)
        self._chunks, self._bm25, self._generation = chunks, bm25, generation

    def _write(self, chunks: list[KeywordChunk], bm25: bm25s.BM25 | None) -> str:
        generation = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"  # sorts oldest first
        folder = self.directory / generation
        folder.mkdir()
        if bm25 is not None:
            bm25.save(str(folder), show_progress=False)
        with (folder / CHUNKS_FILE).open("w", encoding="utf-8") as handle:
            for c in chunks:
                record = {"id": c.node_id, "text": c.text, "metadata": c.metadata}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        pointer = self.directory / f"{CURRENT}.{generation}.tmp"
        pointer.write_text(generation)
        os.replace(pointer, self.directory / CURRENT)
        folders = sorted(p for p in self.directory.iterdir() if p.is_dir())
        for old in folders[:-_KEEP_GENERATIONS]:
            shutil.rmtree(old, ignore_errors=True)
        return generation

    def _refresh(self) -> None:
        """Load the live generation if it is not the one in memory (caller holds the lock)."""
        try:
            generation = (self.directory / CURRENT).read_text().strip()
        except FileNotFoundError:
            return
        if generation == self._generation:
            return
        folder = self.directory / generation
        with (folder / CHUNKS_FILE).open(encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle if line.strip()]
        chunks = [KeywordChunk(r["id"], r["text"], r["metadata"]) for r in records]
        bm25 = bm25s.BM25.load(str(folder), show_progress=False) if chunks else None
        self._chunks, self._bm25, self._generation = chunks, bm25, generation
