"""The comparison table of docs/protocol.md: each method at the strength chosen on the validation
sweep, reported from the test sweep, as mean ± sd over seeds with paired bootstrap intervals.

    python experiments/protocol.py --validation VAL/frontier.json --test TEST/frontier.json

The choice uses the validation sweep alone: the target KL is the Q-adapter's at strength 1 (mean
over its seeds), and every method is served at the strength of its validation curve whose KL is
nearest the target (matched KL). The test sweep, run over the same fixed strengths, is only read at
those chosen strengths. Intervals: two-level bootstrap, each side's seeds resampled, then the items
(the same draw for both sides of a difference: paired), 95 % percentile.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from collections.abc import Sequence
from pathlib import Path

Report = dict[str, object]
# Per-item outcomes paired across methods, and the report's figure they average to.
PAIRED = {"policy_accuracy": "policy_margins", "refusal_rate": "refused", "retention_accuracy": "correct"}
SHOWN = ("policy_accuracy", "kl_to_base", "retention_accuracy", "refusal_rate", "over_refusal_rate")


def check_sweeps(validation: dict, test: dict, reference: str = "qadapter") -> None:
    """The choice is made on a validation sweep and read from a test sweep over the same grid, with
    one curve per method (the seeds of a method share its adapter name)."""
    if (validation["split"], test["split"]) != ("validation", "test"):
        raise SystemExit(f"expected a validation and a test sweep, got {validation['split']} and {test['split']}")
    if validation["strengths"] != test["strengths"] or 1.0 not in validation["strengths"]:
        raise SystemExit("both sweeps must serve the same strengths, 1 among them")
    for sweep in (validation, test):
        if any(":" in curve for curve in sweep["curves"]) or reference not in sweep["curves"]:
            raise SystemExit(f"expected one curve per method, {reference} among them; got {list(sweep['curves'])}")


def chosen_strengths(validation: dict, reference: str = "qadapter") -> dict[str, float]:
    """Per method, the validation strength whose mean KL is nearest the reference method's at strength 1."""
    curves = validation["curves"]
    target = next(p["kl_to_base"] for p in curves[reference] if p["strength"] == 1.0)
    return {
        method: min((p for p in points if p["strength"] > 0), key=lambda p: abs(p["kl_to_base"] - target))["strength"]
        for method, points in curves.items()
    }


def reports_at(test: dict, method: str, strength: float) -> list[Report]:
    """Every seed's test report of `method` at `strength`."""
    return [r for runs in test["runs"].values() for r in runs if r["method"] == method and r["strength"] == strength]


def seed_outcomes(reports: Sequence[Report], metric: str) -> list[list[float]]:
    """Per report (seed), per item, the outcome behind `metric`; a pair counts 1 when its margin ranks
    the chosen response first, ½ on a tie (the base's every pair)."""
    key = PAIRED[metric]
    rows = [r["per_item"][key] for r in reports]  # type: ignore[index]
    if key == "policy_margins":
        return [[1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in row] for row in rows]
    return [[float(v) for v in row] for row in rows]


def item_outcomes(reports: Sequence[Report], metric: str) -> list[float]:
    """Per item, the outcome behind `metric` averaged over the reports (seeds)."""
    return [statistics.fmean(column) for column in zip(*seed_outcomes(reports, metric))]


def paired_interval(
    ours: Sequence[Sequence[float]], theirs: Sequence[Sequence[float]], draws: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """The mean difference ours − theirs (per seed, per item outcomes) and its 95 % two-level
    percentile bootstrap interval: each draw resamples each side's seeds, then the items (the same
    items for both sides: paired), so the interval holds the seeds' variance as well as the items'."""
    if not ours or not theirs or len({len(row) for row in (*ours, *theirs)}) != 1 or not ours[0]:
        raise ValueError("paired outcomes need the same non-empty items on both sides")
    rng = random.Random(seed)
    num_items = len(ours[0])

    def difference(
        our_seeds: Sequence[Sequence[float]], their_seeds: Sequence[Sequence[float]], items: range | list[int]
    ) -> float:
        return statistics.fmean(
            statistics.fmean(row[i] for row in our_seeds) - statistics.fmean(row[i] for row in their_seeds)
            for i in items
        )

    def resampled(seeds: Sequence[Sequence[float]]) -> Sequence[Sequence[float]]:
        return rng.choices(seeds, k=len(seeds)) if len(seeds) > 1 else seeds  # one seed: itself

    means = sorted(
        difference(resampled(ours), resampled(theirs), rng.choices(range(num_items), k=num_items)) for _ in range(draws)
    )
    tail = int(0.025 * draws)
    return difference(ours, theirs, range(num_items)), means[tail], means[draws - 1 - tail]


def mean_sd(values: Sequence[float]) -> str:
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def table(validation: dict, test: dict, against: str = "dpo") -> str:
    """The markdown table: a row per method at its chosen strength, the base first."""
    strengths = chosen_strengths(validation)
    base = [test["base"]]
    lines = [
        "| method | strength (chosen on validation) | seeds | "
        + " | ".join(SHOWN)
        + " | policy acc. − base [95 %] | policy acc. − "
        + against
        + " [95 %] | refusal − base [95 %] | retention − base [95 %] |",
        "|" + "---|" * (len(SHOWN) + 7),
    ]
    lines.append("| base | 0 | 1 | " + " | ".join(f"{base[0][k]:.3f}" for k in SHOWN) + " | | | | |")
    for method, strength in sorted(strengths.items()):
        reports = reports_at(test, method, strength)
        cells = [mean_sd([float(r[k]) for r in reports]) for k in SHOWN]  # type: ignore[arg-type]
        versus = [
            _interval(reports, base, "policy_accuracy"),
            _interval(reports, reports_at(test, against, strengths[against]), "policy_accuracy")
            if against in strengths and method != against
            else "",
            _interval(reports, base, "refusal_rate"),
            _interval(reports, base, "retention_accuracy"),
        ]
        lines.append(f"| {method} | {strength:g} | {len(reports)} | " + " | ".join(cells + versus) + " |")
    return "\n".join(lines)


def _interval(ours: Sequence[Report], theirs: Sequence[Report], metric: str) -> str:
    mean, low, high = paired_interval(seed_outcomes(ours, metric), seed_outcomes(theirs, metric))
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--validation", type=Path, required=True, help="frontier.json of the validation sweep")
    parser.add_argument("--test", type=Path, required=True, help="frontier.json of the test sweep")
    parser.add_argument("--against", default="dpo", help="the method every other is also compared with")
    args = parser.parse_args()
    validation, test = (json.loads(p.read_text(encoding="utf-8")) for p in (args.validation, args.test))
    check_sweeps(validation, test)
    print(table(validation, test, args.against))


if __name__ == "__main__":
    main()
