"""Print a Markdown table comparing `qadapter eval --json` reports (one file each).

python adapters/examples/compare.py base.eval.json harmless/eval.json sft.eval.json dpo.eval.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = [
    ("policy accuracy", "policy_accuracy", "{:.3f}"),
    ("reward accuracy", "reward_accuracy", "{:.3f}"),
    ("KL to base", "kl_to_base", "{:.4f}"),
    ("retention accuracy", "retention_accuracy", "{:.3f}"),
    ("mean answer tokens", "mean_answer_tokens", "{:.1f}"),
]


def main(paths: list[str]) -> None:
    reports = [json.loads(Path(p).read_text()) for p in paths]
    print("| adapter | method | " + " | ".join(title for title, _, _ in COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    for report in reports:
        cells = ["–" if report.get(key) is None else fmt.format(report[key]) for _, key, fmt in COLUMNS]
        served = f" (α {report['alpha']:g}, ω {report['omega']:g})" if report["method"] == "qadapter" else ""
        print(f"| {report['adapter']}{served} | {report['method']} | " + " | ".join(cells) + " |")
    base = reports[0]
    print(
        f"\n{base['num_pairs']} held-out pairs; retention over {base['num_questions']} questions "
        f"(base model: {base['base_retention_accuracy']:.3f}); KL and answer length over "
        f"{base['num_neutral_prompts']} neutral prompts (base answers: {base['base_mean_answer_tokens']:.1f} tokens)."
    )


if __name__ == "__main__":
    main(sys.argv[1:])
