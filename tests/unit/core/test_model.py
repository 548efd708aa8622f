"""Base model loading errors and the base fingerprint (no model conversion here; see tests/e2e)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qadapter.core.base import BaseModelInfo
from qadapter.core.errors import ModelLoadError
from qadapter.core.model import load_base_model
from qadapter.core.settings import Settings
from tests.conftest import tiny_model


def test_fingerprint_ignores_dtype_and_source() -> None:
    fp32 = BaseModelInfo.from_model(tiny_model(), "a")
    bf16 = BaseModelInfo.from_model(tiny_model(seed=3).to(torch.bfloat16), "b")
    assert fp32.fingerprint == bf16.fingerprint
    assert fp32.fingerprint.startswith("sha256:")


@pytest.mark.parametrize("change", [{"num_hidden_layers": 3}, {"hidden_size": 128}, {"rms_norm_eps": 1e-5}])
def test_fingerprint_changes_with_the_architecture(change: dict) -> None:
    assert (
        BaseModelInfo.from_model(tiny_model(), "a").fingerprint
        != BaseModelInfo.from_model(tiny_model(**change), "a").fingerprint
    )


def test_linear_modules_exclude_embeddings_and_norms() -> None:
    modules = BaseModelInfo.from_model(tiny_model(), "a").linear_modules()
    assert modules["model.layers.0.self_attn.q_proj"] == (64, 64)
    assert modules["model.layers.1.mlp.down_proj"] == (64, 128)
    assert not any("embed" in name or "norm" in name for name in modules)


def test_an_unreachable_hub_id_fails_with_advice(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as caught:
        load_base_model(Settings(model="some-org/some-model", home=tmp_path))
    message = str(caught.value)
    assert "could not load model 'some-org/some-model'" in message
    assert "smollm2-135m-instruct" in message


def test_a_missing_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="is not a model directory or a .gguf file"):
        load_base_model(Settings(model=str(tmp_path / "absent"), home=tmp_path))


def test_a_missing_gguf_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="GGUF file .*absent.gguf' does not exist"):
        load_base_model(Settings(model=str(tmp_path / "absent.gguf"), home=tmp_path))


def test_a_corrupt_gguf_file_fails_cleanly_and_leaves_no_cache(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="could not convert"):
        load_base_model(Settings(model=str(bad), home=tmp_path / "home"))
    assert list((tmp_path / "home" / "models").iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_asking_for_cuda_without_it_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="torch sees no CUDA device"):
        load_base_model(Settings(device="cuda", home=tmp_path))


def test_settings_read_qadapter_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QADAPTER_MODEL", "some/where")
    monkeypatch.setenv("QADAPTER_HOME", str(tmp_path))
    settings = Settings()
    assert (settings.model, settings.home) == ("some/where", tmp_path)
    assert Settings(model="flag").model == "flag"


def test_fingerprint_ignores_float32_noise_in_the_config() -> None:
    """A GGUF stores 1e-05 as float32 and reads back 9.999999747378752e-06: the same base."""
    exact = BaseModelInfo.from_model(tiny_model(rms_norm_eps=1e-5), "a")
    from_gguf = BaseModelInfo.from_model(tiny_model(rms_norm_eps=9.999999747378752e-06), "a")
    assert exact.fingerprint == from_gguf.fingerprint
