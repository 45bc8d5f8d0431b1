"""all-MiniLM-L6-v2 on ONNX Runtime: the exported graph plus its tokenizer, as a llama-index model.

The graph (made by `core.knowledge.embedding_export`) holds the whole sentence-transformers
pipeline, BERT then mean pooling then L2 normalisation, so this side only tokenises exactly as
sentence-transformers does (strip, truncate to 256 word pieces, pad to the longest in the batch)
and runs it. Texts of a batch are run in order of length, as sentence-transformers does: padding
one short query up to a 256-piece chunk would cost the chunk's time.

Threads: one intra-op pool of `threads` (the 2 cores here), with spinning off. Spinning threads
keep polling for work between runs, and on a machine whose cores the engine needs that is stolen
time; a run of this model is too short for the wake-up to matter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from pydantic import PrivateAttr

#: The export's folder under `<data_dir>/models/` (made by `core.knowledge.embedding_export`).
ONNX_DIR_NAME = "all-MiniLM-L6-v2-onnx"
GRAPH_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "export.json"  # written last: its presence means the export is complete
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "sentence_embedding"
MAX_SEQ_LENGTH = 256  # sentence-transformers' max_seq_length for this model
PAD_ID = 0  # [PAD] in the model's vocabulary


def onnx_model_dir(data_dir: Path) -> Path:
    """Where the exported embedding model lives under `data_dir`."""
    return Path(data_dir) / "models" / ONNX_DIR_NAME


def onnx_export_problem(folder: Path) -> str | None:
    """What is wrong with an exported folder, or None if it is complete."""
    if not folder.is_dir():
        return "no such folder"
    for name in (GRAPH_FILE, TOKENIZER_FILE, MANIFEST_FILE):
        if not (folder / name).is_file():
            return f"no {name}"
    return None


class OnnxEmbedding(BaseEmbedding):
    """The exported model in `folder` (model.onnx + tokenizer.json), run on the CPU."""

    _session: Any = PrivateAttr()
    _tokenizer: Any = PrivateAttr()

    def __init__(self, folder: Path, *, embed_batch_size: int, threads: int) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        super().__init__(model_name=str(folder), embed_batch_size=embed_batch_size)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(folder / GRAPH_FILE), options, providers=["CPUExecutionProvider"]
        )
        tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        tokenizer.enable_truncation(MAX_SEQ_LENGTH)
        tokenizer.no_padding()  # each batch is padded to its own longest text below
        self._tokenizer = tokenizer

    @classmethod
    def class_name(cls) -> str:
        """llama-index's name for this model class."""
        return "OnnxEmbedding"

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit vectors of `texts`, one row each, in the order given."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        encodings = self._tokenizer.encode_batch([text.strip() for text in texts])
        order = sorted(range(len(texts)), key=lambda i: -len(encodings[i].ids))
        out: np.ndarray | None = None
        for start in range(0, len(order), self.embed_batch_size):
            batch = order[start : start + self.embed_batch_size]
            vectors = self._run([encodings[i].ids for i in batch])
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[batch] = vectors
        assert out is not None
        return out

    def _run(self, pieces: list[list[int]]) -> np.ndarray:
        width = max(len(p) for p in pieces)
        ids = np.full((len(pieces), width), PAD_ID, dtype=np.int64)
        mask = np.zeros((len(pieces), width), dtype=np.int64)
        for row, p in enumerate(pieces):
            ids[row, : len(p)] = p
            mask[row, : len(p)] = 1
        feed = dict(zip(INPUT_NAMES, (ids, mask, np.zeros_like(ids)), strict=True))
        result: np.ndarray = self._session.run([OUTPUT_NAME], feed)[0]
        return result

    def _get_query_embedding(self, query: str) -> Embedding:
        return self.embed([query])[0].tolist()

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> Embedding:
        return self.embed([text])[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return [row.tolist() for row in self.embed(texts)]
