"""`qadapter generate` on the embedded SmolLM2-135M-Instruct, run as a user runs it (a subprocess)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qadapter.core.base import BaseModelInfo
from qadapter.core.knobs import Knobs
from qadapter.core.model import LoadedModel, embedded_gguf_path, load_base_model
from qadapter.core.settings import Settings
from qadapter.testing.synthetic_adapters import random_adapter

QADAPTER = str(Path(sys.executable).parent / "qadapter")
QUESTION = "What is the capital of France?"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([QADAPTER, *args], capture_output=True, text=True, env=env, timeout=600)


def answers(stdout: str) -> dict[str, str]:
    """`=== label (...) ===` sections of a multi-stream run → label: text."""
    parts = re.split(r"^=== (\S+).* ===$", stdout, flags=re.MULTILINE)
    return {label: text.strip() for label, text in zip(parts[1::2], parts[2::2])}


def test_greedy_chat_answer_names_paris() -> None:
    done = run_cli("generate", "--model", "smollm2-135m-instruct", "--chat", "--max-tokens", "20", QUESTION)
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout


def test_zero_lora_adapters_reproduce_the_base_output(tmp_path: Path, embedded: LoadedModel) -> None:
    knobs = [(1.0, 0.01), (0.5, 0.0), (2.0, 1.0)]
    for i, (alpha, omega) in enumerate(knobs):
        random_adapter(tmp_path / f"zero{i}", embedded.info, name=f"zero{i}", knobs=Knobs(alpha, omega))
    dirs = [arg for i in range(len(knobs)) for arg in ("--adapter", str(tmp_path / f"zero{i}"))]
    done = run_cli("generate", "--chat", "--compare", "--max-tokens", "24", *dirs, "Tell me about cats.")
    assert done.returncode == 0, done.stderr
    outputs = answers(done.stdout)
    assert set(outputs) == {"zero0", "zero1", "zero2", "base"}
    assert len(outputs["base"]) > 20
    assert all(text == outputs["base"] for text in outputs.values())


def test_a_large_random_lora_changes_the_answer(tmp_path: Path, embedded: LoadedModel) -> None:
    random_adapter(tmp_path / "loud", embedded.info, name="loud", b_std=0.5)
    done = run_cli(
        "generate", "--chat", "--compare", "--max-tokens", "16", "--adapter", str(tmp_path / "loud"), QUESTION
    )
    assert done.returncode == 0, done.stderr
    outputs = answers(done.stdout)
    assert "Paris" in outputs["base"]
    assert outputs["loud"] != outputs["base"]


def test_strength_zero_is_the_base_and_one_the_manifests_own(tmp_path: Path, embedded: LoadedModel) -> None:
    random_adapter(tmp_path / "loud", embedded.info, name="loud", b_std=0.5)
    loud = ("--chat", "--max-tokens", "16", "--adapter", str(tmp_path / "loud"), QUESTION)
    at = {s: run_cli("generate", "--compare", "--strength", s, *loud) for s in ("0", "1")}
    assert all(done.returncode == 0 for done in at.values()), at
    zero, one = answers(at["0"].stdout), answers(at["1"].stdout)
    assert zero["loud"] == zero["base"] and one["loud"] != one["base"]
    assert "(alpha=1, omega=0.01)" in at["1"].stdout  # the manifest's own knobs
    refused = run_cli("generate", "--strength", "1", "--alpha", "2", "--omega", "1", *loud)
    assert refused.returncode == 2 and "not both" in refused.stderr and "Traceback" not in refused.stderr


def test_an_adapter_for_another_base_is_refused_without_a_traceback(tmp_path: Path, embedded: LoadedModel) -> None:
    other = BaseModelInfo(id="other-base", fingerprint="sha256:0000", param_shapes=embedded.info.param_shapes)
    random_adapter(tmp_path / "foreign", other, name="foreign")
    done = run_cli("generate", "--adapter", str(tmp_path / "foreign"), "hi")
    assert done.returncode == 2
    assert "was trained for base model 'other-base'" in done.stderr
    assert embedded.info.fingerprint in done.stderr
    assert "Traceback" not in done.stderr


def test_an_offline_hub_id_fails_with_a_clear_message() -> None:
    done = run_cli("generate", "--model", "nobody/no-such-model", "hi")
    assert done.returncode == 2
    assert done.stderr.startswith("error: could not load model 'nobody/no-such-model'")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--max-tokens", "0", "must be > 0"),
        ("--alpha", "nan", "must be in [0.001, 10000]"),
        ("--alpha", "1e-300", "must be in [0.001, 10000]"),
        ("--omega", "-1", "must be in [0, 10000]"),
    ],
)
def test_bad_flags_are_rejected_by_the_parser(flag: str, value: str, message: str) -> None:
    done = run_cli("generate", flag, value, "hi")
    assert done.returncode == 2
    assert f"{flag}: {message}" in done.stderr


def test_gguf_path_and_local_directory_load_the_same_base(tmp_path: Path, embedded: LoadedModel) -> None:
    """A .gguf path converts into its own cache; the cache dir then loads as a plain HF directory."""
    converted = load_base_model(Settings(model=str(embedded_gguf_path()), home=tmp_path, device="cpu"))
    assert converted.info.fingerprint == embedded.info.fingerprint
    (cache_dir,) = (tmp_path / "models").iterdir()
    local = load_base_model(Settings(model=str(cache_dir), home=tmp_path / "unused", device="cpu"))
    assert local.info.fingerprint == embedded.info.fingerprint
    assert local.info.id == str(cache_dir)
    assert not any(p.requires_grad for p in local.model.parameters())
    assert not local.model.training
