"""The adapter format: `create` writes what `validate` accepts; each rejection names its problem."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from qadapter.adapters.format import (
    CONFIG_FILE,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    AdapterLimits,
    LoraSpec,
    check_name,
    validate,
)
from qadapter.core.base import BaseModelInfo
from qadapter.core.errors import InvalidAdapter, InvalidData
from qadapter.testing.synthetic_adapters import random_adapter
from tests.conftest import tiny_model

A_KEY = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
B_KEY = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"


@pytest.fixture
def adapter_dir(tmp_path: Path, tiny_info: BaseModelInfo) -> Path:
    random_adapter(tmp_path / "good", tiny_info, name="good", b_std=0.1)
    return tmp_path / "good"


def _edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _rejects(path: Path, base: BaseModelInfo, *fragments: str, limits: AdapterLimits = AdapterLimits()) -> None:
    with pytest.raises(InvalidAdapter) as caught:
        validate(path, base, limits)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_created_adapter_validates(adapter_dir: Path, tiny_info: BaseModelInfo) -> None:
    adapter = validate(adapter_dir, tiny_info)
    assert adapter.name == "good"
    assert adapter.max_rank == 8
    assert adapter.modules == tuple(f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj"))
    assert adapter.size_bytes > 0
    assert set(p.name for p in adapter_dir.iterdir()) == {CONFIG_FILE, WEIGHTS_FILE, MANIFEST_FILE}


def test_rejects_a_path_that_is_not_a_directory(tmp_path: Path, tiny_info: BaseModelInfo) -> None:
    _rejects(tmp_path / "absent", tiny_info, "is not a directory")


@pytest.mark.parametrize("missing", [CONFIG_FILE, WEIGHTS_FILE, MANIFEST_FILE])
def test_rejects_missing_files(adapter_dir: Path, tiny_info: BaseModelInfo, missing: str) -> None:
    (adapter_dir / missing).unlink()
    _rejects(adapter_dir, tiny_info, "is missing", missing)


@pytest.mark.parametrize("pickle_name", ["adapter_model.bin", "extra.pt", "w.pth", "sub/x.pkl"])
def test_rejects_pickle_weight_files(adapter_dir: Path, tiny_info: BaseModelInfo, pickle_name: str) -> None:
    (adapter_dir / pickle_name).parent.mkdir(exist_ok=True)
    (adapter_dir / pickle_name).write_bytes(b"\x80\x04anything")
    _rejects(adapter_dir, tiny_info, "pickle weight files are not accepted", pickle_name)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"alpha": 0}, "alpha"),
        ({"omega": -1}, "omega"),
        ({"format_version": 2}, "format_version"),
        ({"surprise": 1}, "surprise"),
        ({"base_model": {"id": "x"}}, "base_model.fingerprint"),
    ],
)
def test_rejects_a_manifest_outside_the_schema(
    adapter_dir: Path, tiny_info: BaseModelInfo, changes: dict, field: str
) -> None:
    _edit_json(adapter_dir / MANIFEST_FILE, **changes)
    _rejects(adapter_dir, tiny_info, "does not match the manifest schema", field)


def test_rejects_a_manifest_without_a_name(adapter_dir: Path, tiny_info: BaseModelInfo) -> None:
    data = json.loads((adapter_dir / MANIFEST_FILE).read_text())
    del data["name"]
    (adapter_dir / MANIFEST_FILE).write_text(json.dumps(data))
    _rejects(adapter_dir, tiny_info, "does not match the manifest schema", "name: Field required")


def test_rejects_a_manifest_that_is_not_json(adapter_dir: Path, tiny_info: BaseModelInfo) -> None:
    (adapter_dir / MANIFEST_FILE).write_text("{not json")
    _rejects(adapter_dir, tiny_info, "qadapter.json is not valid JSON")


@pytest.mark.parametrize("name", ["Upper", "-dash-first", "has space", "a" * 65, "", "../escape", "é"])
def test_rejects_names_outside_the_pattern(adapter_dir: Path, tiny_info: BaseModelInfo, name: str) -> None:
    _edit_json(adapter_dir / MANIFEST_FILE, name=name)
    _rejects(adapter_dir, tiny_info, f"adapter name {name!r} is not allowed")


@pytest.mark.parametrize("name", ["a", "harmless", "v1.2_beta-3", "0" + "x" * 63])
def test_accepts_names_inside_the_pattern(name: str) -> None:
    check_name(name)


def test_rejects_a_different_base_naming_both(adapter_dir: Path, tiny_info: BaseModelInfo) -> None:
    other = BaseModelInfo.from_model(tiny_model(num_hidden_layers=3), "other-llama")
    _rejects(adapter_dir, other, "'tiny-llama'", tiny_info.fingerprint, "'other-llama'", other.fingerprint)


def test_rejects_target_modules_missing_from_the_base(adapter_dir: Path, tiny_info: BaseModelInfo) -> None:
    _edit_json(adapter_dir / CONFIG_FILE, target_modules=["q_proj", "c_attn"])
    _rejects(adapter_dir, tiny_info, "LoRA target modules ['c_attn'] do not exist", "'tiny-llama'")


def test_rejects_a_target_regex_that_matches_nothing(adapter_dir: Path, tiny_info: BaseModelInfo) -> None:
    _edit_json(adapter_dir / CONFIG_FILE, target_modules=r".*\.attn\.c_proj")
    _rejects(adapter_dir, tiny_info, "matches no linear layer")


def test_rejects_a_rank_above_the_maximum(adapter_dir: Path, tiny_info: BaseModelInfo) -> None:
    _rejects(
        adapter_dir, tiny_info, "LoRA rank 8 is above this server's maximum of 4", limits=AdapterLimits(max_rank=4)
    )


def test_rejects_tensors_whose_rank_differs_from_the_config(tmp_path: Path, tiny_info: BaseModelInfo) -> None:
    random_adapter(tmp_path / "a", tiny_info, "test-adapter", lora=LoraSpec(r=4))
    weights = load_file(tmp_path / "a" / WEIGHTS_FILE)
    weights[A_KEY], weights[B_KEY] = torch.zeros(16, 64), torch.zeros(64, 16)  # config still says r=4
    save_file(weights, tmp_path / "a" / WEIGHTS_FILE)
    _rejects(tmp_path / "a", tiny_info, "(A [16, 64], B [64, 16])", "at rank 4", limits=AdapterLimits(max_rank=8))


@pytest.mark.parametrize(
    "changes",
    [{"r": 0}, {"r": True}, {"r": "8"}, {"rank_pattern": {"q_proj": -1}}],
)
def test_rejects_ranks_that_are_not_positive_integers(
    adapter_dir: Path, tiny_info: BaseModelInfo, changes: dict
) -> None:
    _edit_json(adapter_dir / CONFIG_FILE, **changes)
    _rejects(adapter_dir, tiny_info, "LoRA ranks must be positive integers")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lora_alpha": "x"}, "lora_alpha must be a number in (0, 4096]"),
        ({"lora_alpha": 0}, "lora_alpha must be a number in (0, 4096]"),
        ({"lora_alpha": 1e9}, "lora_alpha must be a number in (0, 4096]"),
        ({"alpha_pattern": {"q_proj": -2}}, "alpha_pattern.q_proj must be a number"),
        ({"lora_dropout": 1.5}, "lora_dropout must be a number in [0, 1)"),
        ({"lora_alpha": float("nan")}, "NaN is not a JSON number"),
        ({"lora_alpha": float("inf")}, "Infinity is not a JSON number"),
        ({"lora_dropout": float("-inf")}, "-Infinity is not a JSON number"),
    ],
)
def test_rejects_non_finite_or_absurd_lora_settings_naming_them(
    adapter_dir: Path, tiny_info: BaseModelInfo, changes: dict, message: str
) -> None:
    _edit_json(adapter_dir / CONFIG_FILE, **changes)  # json.dumps writes NaN and Infinity as their bare names
    _rejects(adapter_dir, tiny_info, message)


def test_rejects_manifests_too_large_or_too_deep(adapter_dir: Path, tiny_info: BaseModelInfo) -> None:
    _edit_json(adapter_dir / MANIFEST_FILE, description="x" * 5000)
    _rejects(adapter_dir, tiny_info, "description: String should have at most 4096 characters")
    _edit_json(adapter_dir / MANIFEST_FILE, description="", training={"deep": json.loads("[" * 40 + "]" * 40)})
    _rejects(adapter_dir, tiny_info, "nested too deeply")
    (adapter_dir / MANIFEST_FILE).write_text("[" * 200_000 + "]" * 200_000)  # deeper than the parser recurses
    _rejects(adapter_dir, tiny_info, "qadapter.json")
    (adapter_dir / MANIFEST_FILE).write_text(" " * (2 << 20) + "{}")
    _rejects(adapter_dir, tiny_info, "is over 1048576 bytes")


@pytest.mark.parametrize(("option", "value"), [("bias", "all"), ("layers_to_transform", [0]), ("lora_bias", True)])
def test_rejects_options_the_server_does_not_run(
    adapter_dir: Path, tiny_info: BaseModelInfo, option: str, value: object
) -> None:
    _edit_json(adapter_dir / CONFIG_FILE, **{option: value})
    _rejects(adapter_dir, tiny_info, f"{option}={value!r} is not supported")


@pytest.mark.parametrize("targets", [[], [1], {"q_proj": 1}, None])
def test_rejects_malformed_target_modules(adapter_dir: Path, tiny_info: BaseModelInfo, targets: object) -> None:
    _edit_json(adapter_dir / CONFIG_FILE, target_modules=targets)
    _rejects(adapter_dir, tiny_info, "target_modules must be a non-empty list of names or a regex string")


def test_rejects_a_config_that_is_not_an_object(adapter_dir: Path, tiny_info: BaseModelInfo) -> None:
    (adapter_dir / CONFIG_FILE).write_text("[1, 2]")
    _rejects(adapter_dir, tiny_info, "adapter_config.json must hold a JSON object")


def test_rejects_tensors_outside_the_configured_targets(adapter_dir: Path, tiny_info: BaseModelInfo) -> None:
    _edit_json(adapter_dir / CONFIG_FILE, target_modules=["q_proj"])  # the weights also hold v_proj
    _rejects(adapter_dir, tiny_info, "does not match adapter_config.json", "model.layers.0.self_attn.v_proj")


def test_rejects_targets_without_tensors(adapter_dir: Path, tiny_info: BaseModelInfo) -> None:
    _edit_json(adapter_dir / CONFIG_FILE, target_modules=["q_proj", "v_proj", "k_proj"])
    _rejects(adapter_dir, tiny_info, "targeted modules without tensors", "model.layers.1.self_attn.k_proj")


@pytest.mark.parametrize("bad", [torch.full((8, 64), float("nan")), torch.zeros(8, 64, dtype=torch.int8)])
def test_rejects_non_finite_or_integer_weights(adapter_dir: Path, tiny_info: BaseModelInfo, bad: torch.Tensor) -> None:
    weights = load_file(adapter_dir / WEIGHTS_FILE)
    weights[A_KEY] = bad
    save_file(weights, adapter_dir / WEIGHTS_FILE)
    _rejects(adapter_dir, tiny_info, "must hold finite floating-point values", A_KEY)


def test_rejects_weights_no_trained_lora_has(adapter_dir: Path, tiny_info: BaseModelInfo) -> None:
    weights = load_file(adapter_dir / WEIGHTS_FILE)
    weights[A_KEY] = weights[A_KEY].clone()
    weights[A_KEY][3, 5] = -1e30  # finite, but it only drives the served scores to inf
    save_file(weights, adapter_dir / WEIGHTS_FILE)
    _rejects(adapter_dir, tiny_info, A_KEY, "magnitude 1e+30", "limit of 100")
    _rejects(adapter_dir, tiny_info, "limit of 1e+20", limits=AdapterLimits(max_weight=1e20))
    assert validate(adapter_dir, tiny_info, AdapterLimits(max_weight=1e31)).name == "good"  # an operator's choice


@pytest.mark.parametrize(
    ("field", "value"),
    [("target_modules", "q_proj("), ("rank_pattern", {"q_pro[j": 4}), ("alpha_pattern", {"(?P<": 8})],
)
def test_rejects_patterns_that_are_no_regular_expression(
    adapter_dir: Path, tiny_info: BaseModelInfo, field: str, value: object
) -> None:
    _edit_json(adapter_dir / CONFIG_FILE, **{field: value})
    _rejects(adapter_dir, tiny_info, "is not a valid regular expression")


def test_accepts_dotted_targets_and_rank_patterns(tmp_path: Path, tiny_info: BaseModelInfo) -> None:
    random_adapter(tmp_path / "a", tiny_info, "test-adapter", lora=LoraSpec(r=4, target_modules=("q_proj",)))
    _edit_json(tmp_path / "a" / CONFIG_FILE, target_modules=["self_attn.q_proj"], r=2, rank_pattern={"q_proj": 4})
    assert validate(tmp_path / "a", tiny_info).max_rank == 4


def test_rejects_tensors_whose_shapes_do_not_fit(adapter_dir: Path, tiny_info: BaseModelInfo) -> None:
    weights = load_file(adapter_dir / WEIGHTS_FILE)
    weights[A_KEY] = torch.zeros(8, 65)
    save_file(weights, adapter_dir / WEIGHTS_FILE)
    _rejects(adapter_dir, tiny_info, "do not fit the base layer [64, 64] at rank 8", "model.layers.0.self_attn.q_proj")


def test_rejects_tensors_for_modules_the_base_lacks(adapter_dir: Path, tiny_info: BaseModelInfo) -> None:
    weights = load_file(adapter_dir / WEIGHTS_FILE)
    weights[A_KEY.replace("layers.0", "layers.7")] = torch.zeros(8, 64)
    save_file(weights, adapter_dir / WEIGHTS_FILE)
    _rejects(adapter_dir, tiny_info, "targets a module that base model 'tiny-llama' lacks", "layers.7")


def test_rejects_half_a_lora_pair(adapter_dir: Path, tiny_info: BaseModelInfo) -> None:
    weights = load_file(adapter_dir / WEIGHTS_FILE)
    del weights[B_KEY]
    save_file(weights, adapter_dir / WEIGHTS_FILE)
    _rejects(adapter_dir, tiny_info, "has lora_A or lora_B but not both")


def test_rejects_dora(adapter_dir: Path, tiny_info: BaseModelInfo) -> None:
    _edit_json(adapter_dir / CONFIG_FILE, use_dora=True)
    _rejects(adapter_dir, tiny_info, "DoRA adapters (use_dora) are not supported")


def test_rejects_dora_magnitude_tensors(adapter_dir: Path, tiny_info: BaseModelInfo) -> None:
    weights = load_file(adapter_dir / WEIGHTS_FILE)
    weights["base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"] = torch.ones(64)
    save_file(weights, adapter_dir / WEIGHTS_FILE)
    _rejects(adapter_dir, tiny_info, "unexpected tensor", "lora_magnitude_vector")


def test_rejects_modules_to_save(adapter_dir: Path, tiny_info: BaseModelInfo) -> None:
    _edit_json(adapter_dir / CONFIG_FILE, modules_to_save=["lm_head"])
    _rejects(adapter_dir, tiny_info, "modules_to_save (['lm_head']) is not supported")


def test_rejects_other_peft_methods(adapter_dir: Path, tiny_info: BaseModelInfo) -> None:
    _edit_json(adapter_dir / CONFIG_FILE, peft_type="IA3")
    _rejects(adapter_dir, tiny_info, "peft_type must be 'LORA', not 'IA3'")


def test_rejects_a_truncated_weights_file(adapter_dir: Path, tiny_info: BaseModelInfo) -> None:
    data = (adapter_dir / WEIGHTS_FILE).read_bytes()
    (adapter_dir / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    _rejects(adapter_dir, tiny_info, "adapter_model.safetensors is corrupt or truncated")


def test_rejects_a_corrupt_weights_file(adapter_dir: Path, tiny_info: BaseModelInfo) -> None:
    (adapter_dir / WEIGHTS_FILE).write_bytes(b"\xff" * 64)
    _rejects(adapter_dir, tiny_info, "adapter_model.safetensors is corrupt or truncated")


def test_validation_leaves_the_directory_untouched(adapter_dir: Path, tiny_info: BaseModelInfo) -> None:
    before = {p.name: p.read_bytes() for p in adapter_dir.iterdir()}
    validate(adapter_dir, tiny_info)
    assert {p.name: p.read_bytes() for p in adapter_dir.iterdir()} == before


def test_a_lora_on_the_top_layers_names_them_and_more_layers_than_the_model_has_are_refused() -> None:
    spec = LoraSpec().on_top(2, num_layers=30)
    assert spec.layers == (28, 29) and spec.first_layer == 28
    targets = spec.peft_config()["target_modules"]
    assert re.fullmatch(targets, "model.layers.29.self_attn.q_proj")
    assert not re.fullmatch(targets, "model.layers.9.self_attn.q_proj")
    assert not re.fullmatch(targets, "model.layers.129.self_attn.q_proj")
    assert LoraSpec().on_top(0, num_layers=30) == LoraSpec()
    with pytest.raises(InvalidData, match="has 30 layers"):
        LoraSpec().on_top(31, num_layers=30)


def test_a_lora_adapts_the_modules_its_peft_config_targets() -> None:
    modules = [f"model.layers.{n}.{kind}" for n in (9, 28, 29, 129) for kind in ("self_attn.q_proj", "mlp.up_proj")]
    for spec in (LoraSpec(), LoraSpec().on_top(2, num_layers=30)):
        targets = spec.peft_config()["target_modules"]
        if isinstance(targets, list):  # peft's rule for a list: the name ends in one of them
            expected = [m for m in modules if m.rsplit(".", 1)[-1] in targets]
        else:
            expected = [m for m in modules if re.fullmatch(targets, m)]
        assert [m for m in modules if spec.adapts(m)] == expected
    assert LoraSpec().on_top(2, num_layers=30).adapts("model.layers.28.self_attn.q_proj")
