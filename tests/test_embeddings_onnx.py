"""The embedding model on ONNX Runtime gives the torch model's vectors, and falls back to torch.

The export under test is the one the product uses: `<repo>/data/models/all-MiniLM-L6-v2-onnx`,
made by `make setup` (made here if it is missing, the same idempotent call).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest
from llama_index.embeddings.huggingface import HuggingFaceEmbedding

from core.knowledge.embedding_export import ensure_onnx_export
from core.knowledge.embeddings import load_embedding_model, torch_embedding_model
from core.knowledge.onnx_embedding import GRAPH_FILE, TOKENIZER_FILE, OnnxEmbedding

REPO = Path(__file__).resolve().parents[1]
MIN_COSINE = 0.999
_VOCABULARY = """
revenue churn quarter invoice budget margin customer contract deployment latency incident
database cluster migration security audit payroll vendor compliance roadmap backlog
Zürich naïve café déjà-vu São Paulo Łódź Ελλάδα Москва 東京 北京 서울 مرحبا שלום 🙂 🚀
e-mail x86_64 v1.2.3 3.14159 -42 1,234,567 (±5%) $12.50 €9 #hashtag @user https://x.test/a?b=c
def return None {} [] <tag> && || == != ;; \\n \\t ... — – « » “quoted” 'single'
"""
_WORDS = _VOCABULARY.split()


def _texts(count: int, seed: int) -> list[str]:
    """Varied texts: empty and blank, one word, sentences, chunks past the 256-piece limit."""
    rng = random.Random(seed)
    texts = ["", " ", "\n\t", "a", "?", "A" * 600]
    lengths = [1, 2, 5, 12, 30, 80, 200, 400]
    while len(texts) < count:
        words = [rng.choice(_WORDS) for _ in range(rng.choice(lengths))]
        text = " ".join(words)
        if rng.random() < 0.3:
            text = text.upper() if rng.random() < 0.5 else text.capitalize() + "."
        if rng.random() < 0.2:
            text = "\n\n".join([text, text[: len(text) // 2]])
        texts.append(text)
    return texts


@pytest.fixture(scope="module")
def onnx_dir() -> Path:
    return ensure_onnx_export(REPO / "data")


@pytest.fixture(scope="module")
def onnx_model(onnx_dir: Path) -> OnnxEmbedding:
    model = load_embedding_model(onnx_dir)
    assert isinstance(model, OnnxEmbedding)
    return model


@pytest.fixture(scope="module")
def torch_model() -> HuggingFaceEmbedding:
    return torch_embedding_model()


def _cosines(a: list[list[float]], b: list[list[float]]) -> np.ndarray:
    x, y = np.asarray(a), np.asarray(b)
    assert x.shape == y.shape
    return (x * y).sum(axis=1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))


def test_text_vectors_match_torch_over_varied_texts(
    onnx_model: OnnxEmbedding, torch_model: HuggingFaceEmbedding
) -> None:
    texts = _texts(64, seed=18)  # every length class several times; torch is the slow side
    ours = onnx_model.get_text_embedding_batch(texts)
    reference = torch_model.get_text_embedding_batch(texts)
    cosines = _cosines(ours, reference)
    worst = int(np.argmin(cosines))
    assert cosines[worst] >= MIN_COSINE, (texts[worst][:80], float(cosines[worst]))
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-4)  # unit length, as torch's


def test_query_vectors_match_torch(
    onnx_model: OnnxEmbedding, torch_model: HuggingFaceEmbedding
) -> None:
    queries = [t for t in _texts(24, seed=4) if t.strip()]
    ours = [onnx_model.get_query_embedding(q) for q in queries]
    reference = [torch_model.get_query_embedding(q) for q in queries]
    assert _cosines(ours, reference).min() >= MIN_COSINE


def test_a_batch_keeps_the_order_of_its_texts(onnx_model: OnnxEmbedding) -> None:
    # The runtime sorts a batch by length; the vectors must come back in the caller's order.
    texts = ["revenue", " ".join(["incident review"] * 100), "東京", "budget margin customer"]
    batch = onnx_model.get_text_embedding_batch(texts)
    alone = [onnx_model.get_text_embedding(t) for t in texts]
    assert _cosines(batch, alone).min() >= 0.99999
    assert _cosines(batch[:1], batch[1:2])[0] < 0.9  # different texts, different vectors


def test_without_the_export_the_torch_model_is_used_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="core.knowledge.embeddings"):
        model = load_embedding_model(tmp_path / "never-exported")
    assert isinstance(model, HuggingFaceEmbedding)
    assert "no ONNX export" in caplog.text and "never-exported" in caplog.text
    assert not (tmp_path / "never-exported").exists()  # nothing exported or fetched at run time


def test_a_half_written_export_is_not_used(onnx_dir: Path, tmp_path: Path) -> None:
    # Graph and tokenizer but no manifest: what a crash mid-export would leave, if it could.
    half = tmp_path / "half"
    half.mkdir()
    for name in (GRAPH_FILE, TOKENIZER_FILE):
        (half / name).symlink_to(onnx_dir / name)
    assert isinstance(load_embedding_model(half), HuggingFaceEmbedding)
