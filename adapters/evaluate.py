"""`qadapter eval`: did the adapter learn the preference, and how much of the base model did it keep?

- `policy_accuracy` / `policy_margin`: one yardstick for every method — pairs ranked by the served
  policy's log-ratio to the base, Σ log π_served(y)/π_base(y) (ties, such as every pair of the base
  model itself, count half);
- `reward_accuracy` / `reward_margin`: for a Q-adapter only, pairs ranked by the reward it trains,
  R(y) of docs/design.md §1 (None for the others);
- `kl_to_base`: mean per-token KL(π_custom ‖ π_base) along the base's greedy answers to neutral prompts;
- `retention_accuracy`: short factual questions answered (substring match) with the adapter, beside the
  base's own `base_retention_accuracy`;
- `mean_answer_tokens`: greedy answer length on the neutral prompts, beside the base's (a length preference
  shows up here);
- `refusal_rate`: share of greedy answers to the held-out pairs' prompts (harmful requests, for
  `harmless`) that refuse, and `over_refusal_rate` the same on the neutral prompts, each beside the
  base's (`adapters/behaviour.py`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from peft import PeftModel

from qadapter.adapters.answers import Answers, EvalSets
from qadapter.adapters.behaviour import refusal_rate
from qadapter.adapters.data import PreferencePair
from qadapter.adapters.format import MANIFEST_FILE, Manifest, ValidatedAdapter, read_manifest, validate
from qadapter.adapters.rankings import adapter_method, ranked_share, served_margins
from qadapter.adapters.scoring import (
    ModelRows,
    base_window_logits,
    collate,
    window_logits,
)
from qadapter.core.chat import user_prompt_ids
from qadapter.core.decode import Stream
from qadapter.core.errors import InvalidData
from qadapter.core.knobs import PLAIN, Knobs
from qadapter.core.model import LoadedModel
from qadapter.core.policy import customised_logits

ADAPTER = "default"  # the name peft gives the one adapter it loads
BASE = Stream(None)


@dataclass(frozen=True)
class EvalReport:
    adapter: str
    method: str
    alpha: float
    omega: float
    num_pairs: int
    policy_accuracy: float
    policy_margin: float
    reward_accuracy: float | None
    reward_margin: float | None
    kl_to_base: float
    retention_accuracy: float
    base_retention_accuracy: float
    mean_answer_tokens: float
    base_mean_answer_tokens: float
    refusal_rate: float
    base_refusal_rate: float
    over_refusal_rate: float
    base_over_refusal_rate: float
    num_refusal_prompts: int
    num_neutral_prompts: int
    num_questions: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def read_adapter_manifest(path: Path) -> Manifest:
    """The manifest alone, before the base model is loaded (to learn which base the adapter needs)."""
    if not (Path(path) / MANIFEST_FILE).is_file():
        raise InvalidData(f"{str(path)!r} is not an adapter directory (no {MANIFEST_FILE}); pass a directory or 'base'")
    return read_manifest(Path(path) / MANIFEST_FILE)


def evaluate(
    loaded: LoadedModel,
    adapter_dir: Path | None,
    pairs: Sequence[PreferencePair],
    sets: EvalSets,
    max_length: int,
    knobs: Knobs | None = None,
    show_progress: bool = True,
) -> EvalReport:
    """Every metric of the report, for the adapter at `adapter_dir` or (None) the base model.

    Answers end at the model's stop ids, as in serving. `knobs` evaluates the adapter served with
    them instead of its manifest's, as a request that sets them is served: the policy, its KL and
    answers, and the Q-adapter's reward all use them.
    """
    adapter = _served_adapter(loaded, adapter_dir, knobs)
    scored = PeftModel.from_pretrained(loaded.model, str(adapter_dir)).eval() if adapter else loaded.model
    served = Stream(ADAPTER, adapter.manifest.knobs) if adapter else BASE
    policy, reward = served_margins(
        scored, loaded.tokenizer, adapter, pairs, max_length, loaded.pad_token_id, show_progress
    )
    method = adapter_method(adapter)

    streams = [BASE, served] if adapter else [BASE]
    answers = Answers.generate(loaded, ModelRows(scored), streams, pairs, sets, show_progress)
    neutral_ids = [user_prompt_ids(loaded.tokenizer, p) for p in sets.neutral_prompts]
    kl = kl_to_base(scored, neutral_ids, answers.base_neutral, served.knobs, loaded.pad_token_id) if adapter else 0.0
    shown = served.knobs if adapter else PLAIN
    text = answers.texts(loaded.tokenizer)
    return EvalReport(
        adapter=adapter.name if adapter else "base",
        method=method,
        alpha=shown.alpha,
        omega=shown.omega,
        num_pairs=len(pairs),
        policy_accuracy=ranked_share(policy),
        policy_margin=float(policy.mean()),
        reward_accuracy=None if reward is None else ranked_share(reward),
        reward_margin=None if reward is None else float(reward.mean()),
        kl_to_base=kl,
        retention_accuracy=_correct(text["own_replies"], sets.questions),
        base_retention_accuracy=_correct(text["base_replies"], sets.questions),
        mean_answer_tokens=sum(map(len, answers.own_neutral)) / len(answers.own_neutral),
        base_mean_answer_tokens=sum(map(len, answers.base_neutral)) / len(answers.base_neutral),
        refusal_rate=refusal_rate(text["own_requests"]),
        base_refusal_rate=refusal_rate(text["base_requests"]),
        over_refusal_rate=refusal_rate(text["own_neutral"]),
        base_over_refusal_rate=refusal_rate(text["base_neutral"]),
        num_refusal_prompts=len(answers.own_requests),
        num_neutral_prompts=len(sets.neutral_prompts),
        num_questions=len(sets.questions),
    )


def _served_adapter(loaded: LoadedModel, adapter_dir: Path | None, knobs: Knobs | None) -> ValidatedAdapter | None:
    """The adapter at `adapter_dir` (None: the base model), its manifest saying `knobs` when given."""
    adapter = validate(adapter_dir, loaded.info) if adapter_dir is not None else None
    if knobs is None:
        return adapter
    if adapter is None:
        raise InvalidData("knobs apply to an adapter, not to the base model")
    return replace(adapter, manifest=adapter.manifest.model_copy(update={"alpha": knobs.alpha, "omega": knobs.omega}))


@torch.no_grad()
def kl_to_base(
    model: PeftModel,
    prompts: Sequence[list[int]],
    answers: Sequence[list[int]],
    knobs: Knobs,
    pad_id: int,
    rows_per_batch: int = 8,
) -> float:
    """Mean over answer tokens of KL(π_custom ‖ π_base) at each state the answer passes through."""
    total, num_tokens = 0.0, 0.0
    device = next(model.parameters()).device
    for start in range(0, len(prompts), rows_per_batch):
        rows = list(zip(prompts[start : start + rows_per_batch], answers[start : start + rows_per_batch]))
        batch = collate(rows, pad_id, device)
        base = torch.log_softmax(base_window_logits(model, batch).float(), dim=-1)
        custom = torch.log_softmax(customised_logits(window_logits(model, batch), base, knobs.alpha, knobs.omega), -1)
        per_state = (custom.exp() * (custom - base)).sum(-1)  # [rows, window]
        total += float((per_state * batch.action_mask).sum())
        num_tokens += float(batch.action_mask.sum())
    return total / max(num_tokens, 1.0)


def _correct(answers: Sequence[str], questions: Sequence[tuple[str, list[str]]]) -> float:
    """Share of answers naming one of the question's accepted answers as a whole word (case-insensitive).

    Whole words, so that "4" is not found in "14" nor "ice" in "rice".
    """
    hits = 0
    for text, (_, accepted) in zip(answers, questions):
        hits += any(re.search(rf"(?<!\w){re.escape(a)}(?!\w)", text, re.IGNORECASE) for a in accepted)
    return hits / len(questions)


def format_report(report: EvalReport) -> str:
    """A readable two-column table."""
    rows = [
        ("adapter", f"{report.adapter} ({report.method}, alpha {report.alpha:g}, omega {report.omega:g})"),
        ("policy accuracy", f"{report.policy_accuracy:.3f}  over {report.num_pairs} pairs (log-ratio to base)"),
        ("policy margin (mean)", f"{report.policy_margin:.4f}"),
        *(
            [("reward accuracy", f"{report.reward_accuracy:.3f}  (the Q-adapter's reward R)")]
            if report.reward_accuracy is not None
            else []
        ),
        ("KL to base (per token)", f"{report.kl_to_base:.4f}  over {report.num_neutral_prompts} neutral prompts"),
        (
            "retention accuracy",
            f"{report.retention_accuracy:.3f}  (base {report.base_retention_accuracy:.3f}, {report.num_questions} questions)",
        ),
        ("mean answer tokens", f"{report.mean_answer_tokens:.1f}  (base {report.base_mean_answer_tokens:.1f})"),
        (
            "refusal rate",
            f"{report.refusal_rate:.3f}  (base {report.base_refusal_rate:.3f}, {report.num_refusal_prompts} pair prompts)",
        ),
        ("over-refusal rate", f"{report.over_refusal_rate:.3f}  (base {report.base_over_refusal_rate:.3f}, neutral)"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
