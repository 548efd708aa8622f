"""`qadapter eval --sweep`: adapters served along their strength line (0 = the base, 1 = as trained),
measured by one yardstick, written as a JSON and a PNG: how much preference each method buys for how
much it moves away from the base (KL) and forgets (retention). Adapters of one method (several
seeds) make one curve, their mean at each strength, their spread as error bars."""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qadapter.adapters.format import validate
from qadapter.core.errors import InvalidData
from qadapter.core.knobs import Knobs
from qadapter.core.model import LoadedModel
from qadapter.training.answers import EvalSets
from qadapter.training.data import PreferencePair
from qadapter.training.evaluate import EvalReport, ServedPoint, evaluate_beside_base

FRONTIER_JSON = "frontier.json"
FRONTIER_PNG = "frontier.png"
# What a curve point averages over seeds, and what the plot draws: preference and behaviour (rows)
# against distance from the base and forgetting (columns).
CURVE_METRICS = (
    "policy_accuracy",
    "reward_accuracy",
    "kl_to_base",
    "retention_accuracy",
    "refusal_rate",
    "over_refusal_rate",
    "mean_answer_tokens",
)
PLOT_ROWS = (("policy_accuracy", "policy accuracy (log-ratio)"), ("refusal_rate", "refusal rate"))
PLOT_ROWS += (("mean_answer_tokens", "mean answer tokens"),)
PLOT_COLUMNS = (("kl_to_base", "KL to base (per token)"), ("retention_accuracy", "retention accuracy"))


@dataclass(frozen=True)
class Frontier:
    split: str
    strengths: list[float]
    base: EvalReport
    runs: dict[str, list[EvalReport]]  # per adapter directory, one report per strength in its range

    def curves(self) -> dict[str, list[dict[str, float | None]]]:
        """Per curve, per strength, the mean (and sd over adapters) of each curve metric; the base
        model is every curve's strength-0 point. Adapters of one name and method (the seeds of a
        run) make one curve, named by its method (and name, when several adapters share a method)."""
        by_curve: dict[tuple[str, str], dict[float, list[EvalReport]]] = {}
        for reports in self.runs.values():
            for report in reports:
                assert report.strength is not None  # a sweep serves strengths
                by_curve.setdefault((report.method, report.adapter), {}).setdefault(report.strength, []).append(report)
        methods = [method for method, _ in by_curve]
        return {
            method if methods.count(method) == 1 else f"{method}: {name}": [_curve_point(0.0, [self.base])]
            + [_curve_point(s, at[s]) for s in sorted(at)]
            for (method, name), at in sorted(by_curve.items())
        }

    def as_dict(self) -> dict[str, object]:
        return {
            "split": self.split,
            "strengths": self.strengths,
            "base": self.base.as_dict(),
            "curves": self.curves(),
            "runs": {path: [r.as_dict() for r in reports] for path, reports in self.runs.items()},
        }


def strength_points(knobs: Knobs, strengths: Sequence[float]) -> list[ServedPoint]:
    """The served points of an adapter with these manifest knobs at the strengths within its range
    (SFT and DPO policies reach 1 at most: beyond it the base's weight would turn negative)."""
    low, high = knobs.strength_range
    return [ServedPoint(served, s) for s in strengths if low <= s <= high and (served := knobs.at_strength(s))]


def sweep(
    loaded: LoadedModel,
    adapter_dirs: Sequence[Path],
    pairs: Sequence[PreferencePair],
    sets: EvalSets,
    max_length: int,
    strengths: Sequence[float],
    split: str,
    show_progress: bool = True,
) -> Frontier:
    """Each adapter at each of `strengths` in its range, in one pass each; the base model's report
    comes from the first pass (every pass decodes the base beside the adapter's points)."""
    if not strengths or any(s <= 0 for s in strengths):
        raise InvalidData("--sweep takes strengths above 0 (the base model, strength 0, is always included)")
    adapters = [validate(d, loaded.info) for d in adapter_dirs]  # a wrong base fails before any work
    points = [strength_points(a.manifest.knobs, strengths) for a in adapters]
    for adapter_dir, in_range in zip(adapter_dirs, points):
        if not in_range:
            raise InvalidData(f"{adapter_dir}: none of the strengths {list(strengths)} is in its range")
    bases, runs = [], {}
    for adapter_dir, in_range in zip(adapter_dirs, points):
        base, runs[str(adapter_dir)] = evaluate_beside_base(
            loaded, adapter_dir, pairs, sets, max_length, in_range, show_progress
        )
        bases.append(base)
    return Frontier(split, sorted(strengths), bases[0], runs)


def check_out_dir(out: Path) -> None:
    """Create the sweep's folder now, so that a folder that cannot be written fails before the work."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidData(f"cannot write the sweep to {out}: {exc.strerror}; give another --out") from None
    if not os.access(out, os.W_OK):
        raise InvalidData(f"cannot write the sweep to {out}: not writable; give another --out")


def write_frontier(frontier: Frontier, out: Path) -> tuple[Path, Path]:
    """`frontier.json` and `frontier.png` in `out` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / FRONTIER_JSON, out / FRONTIER_PNG
    json_path.write_text(json.dumps(frontier.as_dict(), indent=1) + "\n", encoding="utf-8")
    plot_frontier(frontier.curves(), f"{frontier.base.num_pairs} pairs, {frontier.split} sets", png_path)
    return json_path, png_path


def plot_frontier(curves: dict[str, list[dict[str, float | None]]], subtitle: str, path: Path) -> None:
    """One panel per (behaviour, distance) metric pair, one line per method, each point labelled
    with its strength; the base model is the shared strength-0 point."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server or in CI
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(PLOT_ROWS), len(PLOT_COLUMNS), figsize=(10, 11), squeeze=False)
    for row, (y_key, y_label) in enumerate(PLOT_ROWS):
        for column, (x_key, x_label) in enumerate(PLOT_COLUMNS):
            panel = axes[row][column]
            for method, points in curves.items():
                xs, ys = [p[x_key] for p in points], [p[y_key] for p in points]
                panel.errorbar(
                    xs, ys, xerr=_spreads(points, x_key), yerr=_spreads(points, y_key), marker="o", label=method
                )
                for point, x, y in zip(points[1:], xs[1:], ys[1:]):
                    panel.annotate(
                        f"{point['strength']:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points"
                    )
            first = next(iter(curves.values()))[0]
            panel.plot([first[x_key]], [first[y_key]], "k*", markersize=12, label="base")
            panel.set_xlabel(x_label)
            panel.set_ylabel(y_label)
            panel.grid(alpha=0.3)
    axes[0][0].legend()
    figure.suptitle(f"Preference against distance from the base, by strength ({subtitle})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def format_frontier(frontier: Frontier) -> str:
    """The curves as a table, one line per method and strength."""
    header = ("method", "strength", "n", "policy acc", "KL", "retention", "refusal", "over-refusal", "tokens")
    lines = ["  ".join(f"{h:>12}" for h in header)]
    for method, points in frontier.curves().items():
        for p in points:
            cells = (method, f"{p['strength']:g}", f"{p['num_adapters']:g}")
            cells += tuple(f"{p[key]:.3f}" for key in ("policy_accuracy", "kl_to_base", "retention_accuracy"))
            cells += tuple(f"{p[key]:.3f}" for key in ("refusal_rate", "over_refusal_rate"))
            cells += (f"{p['mean_answer_tokens']:.1f}",)
            lines.append("  ".join(f"{c:>12}" for c in cells))
    return "\n".join(lines)


def _curve_point(strength: float, reports: Sequence[EvalReport]) -> dict[str, float | None]:
    point: dict[str, float | None] = {"strength": strength, "num_adapters": len(reports)}
    for key in CURVE_METRICS:
        values = [getattr(r, key) for r in reports if getattr(r, key) is not None]
        point[key] = statistics.fmean(values) if values else None
        point[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else None
    return point


def _spreads(points: Sequence[dict[str, float | None]], key: str) -> list[float]:
    return [p[f"{key}_sd"] or 0.0 for p in points]
