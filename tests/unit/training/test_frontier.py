"""`qadapter eval --sweep`: several served points in one pass give what one evaluation per point
gives, each method's curve keeps to its strength range, and the frontier is written as JSON and PNG."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from qadapter.core.knobs import PLAIN, Knobs
from qadapter.core.model import LoadedModel
from qadapter.training.answers import EvalSets
from qadapter.training.evaluate import ServedPoint, evaluate
from qadapter.training.frontier import FRONTIER_JSON, FRONTIER_PNG, strength_points, sweep, write_frontier
from tests.conftest import tiny_model
from tests.unit.training.test_evaluate import PAIRS, VOCAB, tiny_loaded, write_adapter

SETS = EvalSets(
    ["Hi", "Tell me a story about a cat."],
    [("What is the capital of France?", ["Paris"]), ("Name a colour.", ["red"])],
    max_answer_tokens=6,
    max_question_tokens=6,
    max_refusal_tokens=6,
)


def has_lora(model: torch.nn.Module) -> bool:
    return any("lora" in name for name, _ in model.named_modules())


def test_points_in_one_pass_equal_one_evaluation_each_and_leave_the_base_bare(
    embedded: LoadedModel, tmp_path: Path
) -> None:
    model = tiny_model(vocab_size=VOCAB)
    path = write_adapter(tmp_path / "a", model, "qadapter", Knobs(0.8, 0.2))
    loaded = tiny_loaded(model, embedded)
    points = [ServedPoint(k, s) for s in (0.5, 1.0, 1.2) if (k := Knobs(0.8, 0.2).at_strength(s))]
    together = evaluate(loaded, path, PAIRS, SETS, 512, points, show_progress=False)
    assert not has_lora(model)  # the LoRA came out again: the next adapter finds the base as it was
    alone = [evaluate(loaded, path, PAIRS, SETS, 512, [point], show_progress=False)[0] for point in points]
    for one_pass, separate in zip(together, alone):
        assert_close(asdict(one_pass), asdict(separate))
    assert [r.strength for r in together] == [0.5, 1.0, 1.2]
    assert together[0].kl_to_base < together[1].kl_to_base < together[2].kl_to_base  # further along the line
    assert len(together[0].per_item.policy_margins) == len(PAIRS)
    assert len(together[0].per_item.correct) == 2 and len(together[0].per_item.refused) == len(PAIRS)


def assert_close(got: dict, expected: dict) -> None:
    """Equal but for float rounding (one batch of points against one point a batch)."""
    for key, value in expected.items():
        if isinstance(value, dict):
            assert_close(got[key], value)
        elif isinstance(value, float) or (isinstance(value, list) and value and isinstance(value[0], float)):
            assert got[key] == pytest.approx(value, abs=1e-5), key
        else:
            assert got[key] == value, key


def test_plain_policies_reach_strength_one_and_q_adapters_go_beyond() -> None:
    strengths = [0.25, 1.0, 2.0, 4.0]
    assert [p.strength for p in strength_points(PLAIN, strengths)] == [0.25, 1.0]
    harmless = Knobs(20.0, 19.0)  # α/(α − ω) = 20: every listed strength is in range
    assert [p.strength for p in strength_points(harmless, strengths)] == strengths
    assert strength_points(harmless, [1.0])[0].knobs == harmless


def test_a_sweep_writes_one_curve_per_method_with_the_base_as_its_start(embedded: LoadedModel, tmp_path: Path) -> None:
    model = tiny_model(vocab_size=VOCAB)
    seeds = [write_adapter(tmp_path / f"qa-{seed}", model, "qadapter", Knobs(2.0, 1.0), seed=seed) for seed in (3, 4)]
    # a second Q-adapter of another name is a curve of its own: seeds share a name, not just a method
    other = write_adapter(tmp_path / "other", model, "qadapter", Knobs(2.0, 1.0), seed=5, name="other")
    dpo = write_adapter(tmp_path / "dpo", model, "dpo", PLAIN)
    frontier = sweep(
        tiny_loaded(model, embedded), [*seeds, other, dpo], PAIRS, SETS, 512, [0.5, 1.0, 2.0], "test", False
    )
    alone = evaluate(tiny_loaded(model, embedded), None, PAIRS, SETS, 512, show_progress=False)[0]
    assert_close(asdict(frontier.base), asdict(alone))  # decoded beside the first adapter, not on its own
    json_path, png_path = write_frontier(frontier, tmp_path / "out")

    assert (json_path.name, png_path.name) == (FRONTIER_JSON, FRONTIER_PNG)
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png_path.stat().st_size > 10_000
    written = json.loads(json_path.read_text())
    curves = written["curves"]
    assert sorted(curves) == ["dpo", "qadapter: hand", "qadapter: other"]
    assert [p["strength"] for p in curves["dpo"]] == [0.0, 0.5, 1.0]  # a plain policy stops at 1
    assert [p["strength"] for p in curves["qadapter: hand"]] == [0.0, 0.5, 1.0, 2.0]
    base = written["base"]
    for points in curves.values():
        assert points[0]["kl_to_base"] == 0.0 and points[0]["policy_accuracy"] == 0.5
        assert points[0]["retention_accuracy"] == base["retention_accuracy"]
    two_seeds = curves["qadapter: hand"][2]
    runs = [written["runs"][str(path)][1] for path in seeds]  # each seed's strength-1 report
    assert two_seeds["num_adapters"] == 2
    assert two_seeds["kl_to_base"] == pytest.approx(sum(r["kl_to_base"] for r in runs) / 2)
    assert two_seeds["kl_to_base_sd"] is not None and curves["dpo"][1]["kl_to_base_sd"] is None


def test_the_protocol_table_reads_real_sweeps(embedded: LoadedModel, tmp_path: Path) -> None:
    """experiments/protocol.py on what `sweep` writes: two seeds of a Q-adapter and a DPO adapter."""
    from experiments.protocol import chosen_strengths, table

    model = tiny_model(vocab_size=VOCAB)
    adapters = [write_adapter(tmp_path / f"qa-{s}", model, "qadapter", Knobs(2.0, 1.0), seed=s) for s in (3, 4)]
    adapters.append(write_adapter(tmp_path / "dpo", model, "dpo", PLAIN))
    written = {}
    for split in ("validation", "test"):
        frontier = sweep(tiny_loaded(model, embedded), adapters, PAIRS, SETS, 512, [0.5, 1.0], split, False)
        written[split] = json.loads(write_frontier(frontier, tmp_path / split)[0].read_text())
    strengths = chosen_strengths(written["validation"])
    assert strengths["qadapter"] == 1.0 and strengths["dpo"] in (0.5, 1.0)
    lines = table(written["validation"], written["test"]).splitlines()
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| base", "| dpo", "| qadapter"]
    assert lines[4].split(" | ")[2] == "2"  # the Q-adapter's two seeds
