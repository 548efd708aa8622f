"""Training on a tiny model: each method learns a synthetic preference, the result is a valid adapter that
gives the same logits once reloaded (by peft and by the server's LoRA host), runs are seeded and resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from qadapter.adapters.format import WEIGHTS_FILE, LoraSpec, ValidatedAdapter, validate
from qadapter.core.base import BaseModelInfo
from qadapter.core.errors import InvalidData
from qadapter.core.knobs import Knobs
from qadapter.core.lora import AdapterHost
from qadapter.core.model import LoadedModel
from qadapter.training import train as train_module
from qadapter.training.data import PreferenceData, PreferencePair
from qadapter.training.objectives import Objective
from qadapter.training.train import TrainConfig, TrainOptions, train
from tests.conftest import tiny_model

VOCAB = 49152  # the embedded tokenizer's
# A random tiny model predicts ~uniformly (log π ≈ −10.8), so its r² is ~100× a trained model's and the
# default χ² weight of 0.1 would swamp the preference term; DPO's usual 0.1 learns too slowly for 30 steps.
TEST_BETA = {"qadapter": 1e-4, "dpo": 1.0, "sft": 0.1}  # qadapter: as the shipped recipe (docs/training.md)


def synthetic_pairs(count: int = 8) -> PreferenceData:
    """A preference that depends on the prompt (so one step cannot learn it): blue for cold, red for hot."""
    pairs = []
    for i in range(count):
        hot = i % 2 == 1
        prompt = ({"role": "user", "content": f"Pick a colour for the {'hot' if hot else 'cold'} item {i}."},)
        chosen, rejected = ("Red.", "Blue.") if hot else ("Blue.", "Red.")
        pairs.append(PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected, line=i + 1))
    return PreferenceData(pairs=pairs, num_skipped=0, sha256="synthetic")


def run(
    embedded: LoadedModel,
    out: Path,
    method: str = "qadapter",
    steps: int = 30,
    seed: int = 0,
    lora: LoraSpec = LoraSpec(),
    **options: object,
) -> tuple[ValidatedAdapter, torch.nn.Module]:
    """Train a fresh tiny model; return the adapter and the model with its LoRA still attached."""
    model = tiny_model(vocab_size=VOCAB)
    loaded = LoadedModel(model=model, tokenizer=embedded.tokenizer, info=BaseModelInfo.from_model(model, "tiny"))
    config = TrainConfig(
        objective=Objective(method=method, beta=TEST_BETA[method]),
        lora=lora,
        max_steps=steps,
        batch_size=4,
        grad_accum=1,
        learning_rate=1e-2,
        warmup_ratio=0.0,
        seed=seed,
        max_length=64,
    )
    data = synthetic_pairs()
    adapter = train(
        loaded, data, out, config, TrainOptions(name="colour", show_progress=False, **options), eval_data=data
    )
    return adapter, model


@pytest.mark.parametrize("method", ["qadapter", "dpo", "sft"])
def test_each_method_learns_the_preference(embedded: LoadedModel, tmp_path: Path, method: str) -> None:
    before = run(embedded, tmp_path / "one", method, steps=1)[0].manifest.training["final"]
    after = run(embedded, tmp_path / "many", method, steps=40)[0].manifest.training["final"]
    assert after["eval_loss"] < before["eval_loss"] - 0.1
    if method != "sft":
        assert before["eval_accuracy"] <= 0.75 and after["eval_accuracy"] == 1.0


def test_trained_adapter_is_valid_and_reloads_to_identical_logits(embedded: LoadedModel, tmp_path: Path) -> None:
    adapter, trained = run(embedded, tmp_path / "colour", steps=10)
    manifest = json.loads((adapter.path / "qadapter.json").read_text())
    assert manifest["training"]["method"] == "qadapter"
    assert manifest["training"]["hyperparameters"]["objective"]["knobs"]["omega"] == 0.01
    assert (manifest["alpha"], manifest["omega"]) == (1.0, 0.01)
    assert not (tmp_path / "colour.checkpoint").exists()

    ids = torch.tensor([embedded.tokenizer("Pick a colour for item 3.").input_ids])
    with torch.no_grad():
        expected = trained(input_ids=ids).logits[:, -1]
    fresh = tiny_model(vocab_size=VOCAB)
    info = BaseModelInfo.from_model(fresh, "tiny")
    validate(adapter.path, info)
    with torch.no_grad():
        base = fresh(input_ids=ids).logits[:, -1]
        reloaded = PeftModel.from_pretrained(fresh, str(adapter.path)).eval()(input_ids=ids).logits[:, -1]
    assert not torch.allclose(expected, base, atol=1e-3)  # training did change something
    assert torch.allclose(reloaded, expected, atol=1e-5)

    host = AdapterHost(tiny_model(vocab_size=VOCAB))
    host.load("colour", validate(adapter.path, info).read_weights())
    served, _ = host.forward(ids, None, [adapter.name])
    assert torch.allclose(served, expected, atol=1e-4)


@pytest.mark.parametrize("method", ["qadapter", "sft"])
def test_a_lora_on_the_top_layer_learns_and_serves_as_trained(
    embedded: LoadedModel, tmp_path: Path, method: str
) -> None:
    top = LoraSpec(layers=(1,))  # the tiny model's upper layer: the lower one runs once, before the steps
    before = run(embedded, tmp_path / "one", method, steps=1, lora=top)[0].manifest.training["final"]
    adapter, trained = run(embedded, tmp_path / "many", method, steps=40, lora=top)
    assert adapter.manifest.training["final"]["eval_loss"] < before["eval_loss"] - 0.1
    assert {key.split(".layers.")[1].split(".")[0] for key in load_file(adapter.path / WEIGHTS_FILE)} == {"1"}
    ids = torch.tensor([embedded.tokenizer("Pick a colour for item 3.").input_ids])
    with torch.no_grad():
        expected = trained(input_ids=ids).logits[:, -1]
    info = BaseModelInfo.from_model(tiny_model(vocab_size=VOCAB), "tiny")
    host = AdapterHost(tiny_model(vocab_size=VOCAB))
    host.load("colour", validate(adapter.path, info).read_weights())
    served, _ = host.forward(ids, None, [adapter.name])
    assert torch.allclose(served, expected, atol=1e-4)


def test_sft_and_dpo_adapters_are_served_as_plain_lora_policies(embedded: LoadedModel, tmp_path: Path) -> None:
    for method in ("sft", "dpo"):
        adapter, _ = run(embedded, tmp_path / method, method, steps=2)
        assert (adapter.manifest.alpha, adapter.manifest.omega) == (1.0, 0.0)
        assert adapter.manifest.training["method"] == method


def test_same_seed_same_weights_other_seed_other_weights(embedded: LoadedModel, tmp_path: Path) -> None:
    weights = [
        load_file(run(embedded, tmp_path / name, steps=3, seed=seed)[0].path / WEIGHTS_FILE)
        for name, seed in (("a", 0), ("b", 0), ("c", 1))
    ]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def crash_after(monkeypatch: pytest.MonkeyPatch, num_micro_batches: int) -> None:
    """Make the run die (as if killed) when it starts micro-batch `num_micro_batches` + 1."""
    real_step, calls = train_module.compute_step, []

    def step_or_crash(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) > num_micro_batches:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "compute_step", step_or_crash)


def test_resume_continues_exactly_where_the_run_stopped(
    embedded: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = load_file(run(embedded, tmp_path / "straight", steps=6)[0].path / WEIGHTS_FILE)
    with monkeypatch.context() as patch:
        crash_after(patch, 4)  # killed during step 5, after the checkpoint of step 4
        with pytest.raises(KeyboardInterrupt):
            run(embedded, tmp_path / "resumed", steps=6, checkpoint_every=2)
    assert (tmp_path / "resumed.checkpoint").is_dir() and not (tmp_path / "resumed").exists()

    resumed = load_file(
        run(embedded, tmp_path / "resumed", steps=6, checkpoint_every=2, resume=True)[0].path / WEIGHTS_FILE
    )
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_resume_refuses_a_missing_checkpoint_or_one_of_another_run(
    embedded: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(InvalidData, match="no checkpoint"):
        run(embedded, tmp_path / "none", steps=2, resume=True)
    with monkeypatch.context() as patch:
        crash_after(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            run(embedded, tmp_path / "other", steps=4, checkpoint_every=1)
    with pytest.raises(InvalidData, match="other data or hyper-parameters"):
        run(embedded, tmp_path / "other", steps=5, checkpoint_every=1, resume=True)  # 5 steps: another run


def test_existing_output_is_refused(embedded: LoadedModel, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(InvalidData, match="already exists"):
        run(embedded, tmp_path / "taken", steps=1)


def test_serve_alpha_and_omega_set_the_manifest_and_leave_training_alone(embedded: LoadedModel, tmp_path: Path) -> None:
    plain, _ = run(embedded, tmp_path / "plain", steps=2)
    served, _ = run(embedded, tmp_path / "served", steps=2, serve_knobs=Knobs(20.0, 19.0))
    assert (served.manifest.alpha, served.manifest.omega) == (20.0, 19.0)
    assert served.manifest.training["hyperparameters"]["objective"]["knobs"]["alpha"] == 1.0  # trained with the default
    assert load_file(served.path / WEIGHTS_FILE).keys() == load_file(plain.path / WEIGHTS_FILE).keys()
    for key, weight in load_file(served.path / WEIGHTS_FILE).items():
        assert torch.equal(weight, load_file(plain.path / WEIGHTS_FILE)[key])


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_serving_knobs_for_a_plain_lora_are_refused_and_write_nothing(
    embedded: LoadedModel, tmp_path: Path, method: str
) -> None:
    with pytest.raises(InvalidData, match="Q-adapters only"):
        run(embedded, tmp_path / method, method, steps=1, serve_knobs=Knobs(2.0, 1.0))
    assert not (tmp_path / method).exists()
