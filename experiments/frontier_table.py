"""The README's table of the shipped `harmless` along its strength line, made from the frontier
sweep it reports (docs/frontier/frontier.json), so the two cannot drift apart.

    python experiments/frontier_table.py docs/frontier/frontier.json

Each point against the base: the figure, then the paired difference with its 95 % bootstrap
interval (experiments/protocol.py's `paired_interval`, 2,000 draws, seed 0).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from experiments.protocol import Report, paired_interval, seed_outcomes

HEADER = (
    "| served | KL to base | policy accuracy (base {policy:g}) | refusals on harmful requests (base {refusal:.2f}) "
    "| over-refusal (base {over:g}) | retention (base {retention:.2f}) |\n|---|---|---|---|---|---|"
)


def frontier_table(frontier: dict, method: str = "qadapter") -> str:
    """A row per served strength of `method` (the base, strength 0, is the reference of every row)."""
    base: Report = frontier["base"]
    points = sorted(
        (r for runs in frontier["runs"].values() for r in runs if r["method"] == method and r["strength"] > 0),
        key=lambda r: r["strength"],
    )
    lines = [
        HEADER.format(
            policy=base["policy_accuracy"],
            refusal=base["refusal_rate"],
            over=base["over_refusal_rate"],
            retention=base["retention_accuracy"],
        )
    ]
    for point in points:
        cells = [
            f"strength {point['strength']:g}",
            f"{point['kl_to_base']:.3f}",
            _against_base(point, base, "policy_accuracy", 3),
            _against_base(point, base, "refusal_rate", 2),
            f"{point['over_refusal_rate']:.2f}",
            _against_base(point, base, "retention_accuracy", 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return re.sub(r"-(?=\d)", "−", "\n".join(lines))  # the README's minus sign


def _against_base(point: Report, base: Report, metric: str, digits: int) -> str:
    mean, low, high = paired_interval(seed_outcomes([point], metric), seed_outcomes([base], metric))
    value = float(point[metric])  # type: ignore[arg-type]
    return f"{value:.{digits}f}, {mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("frontier", type=Path, help="frontier.json of a sweep (qadapter eval --sweep)")
    print(frontier_table(json.loads(parser.parse_args().frontier.read_text(encoding="utf-8"))))


if __name__ == "__main__":
    main()
