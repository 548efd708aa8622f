"""experiments/protocol.py: strengths chosen on the validation sweep alone, paired bootstrap intervals."""

from __future__ import annotations

import pytest

from experiments.protocol import (
    check_sweeps,
    chosen_strengths,
    item_outcomes,
    paired_interval,
    reports_at,
    seed_outcomes,
    table,
)


def point(strength: float, kl: float) -> dict[str, float]:
    return {"strength": strength, "kl_to_base": kl}


def report(method: str, strength: float, margins: list[float], refused: list[bool], seed: int = 0) -> dict:
    return {
        "adapter": f"{method}-{seed}",
        "method": method,
        "strength": strength,
        "policy_accuracy": sum(m > 0 for m in margins) / len(margins),
        "kl_to_base": 0.01 * strength,
        "retention_accuracy": 0.5,
        "refusal_rate": sum(refused) / len(refused),
        "over_refusal_rate": 0.0,
        "per_item": {"policy_margins": margins, "refused": refused, "correct": [True, False]},
    }


def test_each_method_takes_the_validation_strength_nearest_the_q_adapters_kl_at_one() -> None:
    validation = {
        "curves": {
            "qadapter": [point(0, 0.0), point(1.0, 0.02), point(2.0, 0.08)],
            "dpo": [point(0, 0.0), point(0.25, 0.015), point(0.5, 0.05), point(1.0, 0.3)],
            "sft": [point(0, 0.0), point(0.25, 0.04), point(1.0, 0.9)],
        }
    }
    assert chosen_strengths(validation) == {"qadapter": 1.0, "dpo": 0.25, "sft": 0.25}


def test_a_pair_counts_one_half_or_nothing_and_seeds_average_per_item() -> None:
    seeds = [report("qadapter", 1.0, [1.0, 0.0, -2.0], [True]), report("qadapter", 1.0, [3.0, -1.0, -1.0], [False])]
    assert item_outcomes(seeds, "policy_accuracy") == [1.0, 0.25, 0.0]
    assert item_outcomes(seeds, "refusal_rate") == [0.5]
    assert seed_outcomes(seeds, "policy_accuracy") == [[1.0, 0.5, 0.0], [1.0, 0.0, 0.0]]


def test_the_paired_interval_holds_the_mean_difference_and_is_zero_width_for_a_constant_one() -> None:
    ours, theirs = [[1.0, 1.0, 0.0, 1.0, 0.0, 1.0]], [[0.5] * 6]
    mean, low, high = paired_interval(ours, theirs, draws=500)
    assert mean == pytest.approx(4 / 6 - 0.5) and low < mean < high
    assert paired_interval([[1.0, 0.0]] * 3, [[0.0, -1.0]], draws=100) == (1.0, 1.0, 1.0)  # every difference 1
    with pytest.raises(ValueError, match="same"):
        paired_interval([[1.0]], [[1.0, 0.0]])


def test_seeds_that_disagree_widen_the_interval_that_items_alone_would_give() -> None:
    items = 40
    disagreeing = [[1.0] * items, [0.0] * items, [1.0] * items]  # what a seed gets decides everything
    averaged = [[2 / 3] * items]  # the same per-item means, as if the seeds agreed
    base = [[0.5] * items]
    _, low, high = paired_interval(disagreeing, base, draws=1000)
    _, averaged_low, averaged_high = paired_interval(averaged, base, draws=1000)
    assert averaged_low == averaged_high  # no item varies: a zero-width interval
    assert low < 0 < high  # with the seeds resampled, no difference is shown


def test_the_table_reads_the_test_sweep_at_the_validation_choice_only() -> None:
    validation = {"curves": {"qadapter": [point(0, 0.0), point(1.0, 0.02)], "dpo": [point(0, 0.0), point(0.5, 0.02)]}}
    base = report("base", 0.0, [0.0, 0.0], [False, False])
    test = {
        "base": base,
        "runs": {
            "qa-0": [report("qadapter", 1.0, [1.0, 1.0], [True, False])],
            "qa-1": [report("qadapter", 1.0, [1.0, -1.0], [True, True], seed=1)],
            "dpo-0": [report("dpo", 0.5, [-1.0, -1.0], [False, False]), report("dpo", 1.0, [1.0, 1.0], [True, True])],
        },
    }
    assert [r["adapter"] for r in reports_at(test, "qadapter", 1.0)] == ["qadapter-0", "qadapter-1"]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table(validation, test).splitlines()[2:]}
    assert rows["dpo"].split(" | ")[1] == "0.5"  # not the test's better strength 1
    assert "0.750 ± 0.354" in rows["qadapter"]  # policy accuracy over its two seeds
    assert "+0.750 [" in rows["qadapter"]  # against DPO at its chosen strength: 0.75 − 0


@pytest.mark.parametrize(
    ("validation", "test", "says"),
    [
        ({"split": "test", "strengths": [1.0]}, {"split": "validation", "strengths": [1.0]}, "validation and a test"),
        ({"split": "validation", "strengths": [1.0]}, {"split": "test", "strengths": [0.5, 1.0]}, "same strengths"),
        ({"split": "validation", "strengths": [0.5]}, {"split": "test", "strengths": [0.5]}, "1 among them"),
    ],
)
def test_sweeps_that_could_choose_on_test_data_are_refused(validation: dict, test: dict, says: str) -> None:
    curves = {"curves": {"qadapter": [], "dpo": []}}
    with pytest.raises(SystemExit, match=says):
        check_sweeps(validation | curves, test | curves)


def test_two_curves_of_one_method_are_refused() -> None:
    sweep = {"split": "validation", "strengths": [1.0], "curves": {"qadapter: a": [], "qadapter: b": []}}
    with pytest.raises(SystemExit, match="one curve per method"):
        check_sweeps(sweep, sweep | {"split": "test"})
