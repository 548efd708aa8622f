"""`qadapter eval`: did the adapter learn the preference, and how much of the base model did it keep?

- `policy_accuracy` / `policy_margin`: one yardstick for every method — pairs ranked by the served
  policy's log-ratio to the base, Σ log π_served(y)/π_base(y) (ties, such as every pair of the base
  model itself, count half);
- `reward_accuracy` / `reward_margin`: for a Q-adapter only, pairs ranked by the reward it trains,
  R(y) of docs/design.md §1 (None for the others);
- `kl_to_base`: mean per-token KL(π_custom ‖ π_base) along the base's greedy answers to neutral prompts;
- `retention_accuracy`: short factual questions answered (an accepted answer as a whole word) with the adapter, beside the
  base's own `base_retention_accuracy`;
- `mean_answer_tokens`: greedy answer length on the neutral prompts, beside the base's (a length preference
  shows up here);
- `refusal_rate`: share of greedy answers to the held-out pairs' prompts (harmful requests, for
  `harmless`) that refuse, and `over_refusal_rate` the same on the neutral prompts, each beside the
  base's (`training/behaviour.py`);
- `per_item`: each of those outcomes per pair, request, prompt and question, for paired comparisons.

Several served points of one adapter (the strengths of a sweep) are evaluated in one pass.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from qadapter.adapters.format import MANIFEST_FILE, Manifest, ValidatedAdapter, read_manifest, validate
from qadapter.core.chat import user_prompt_ids
from qadapter.core.decode import Stream
from qadapter.core.errors import InvalidData
from qadapter.core.knobs import PLAIN, Knobs
from qadapter.core.model import LoadedModel
from qadapter.core.policy import customised_logits
from qadapter.training.answers import Answers, EvalSets
from qadapter.training.behaviour import is_refusal
from qadapter.training.data import PreferencePair
from qadapter.training.rankings import adapter_method, ranked_share, served_margins
from qadapter.training.scoring import (
    ModelRows,
    base_window_logits,
    collate,
    window_logits,
)

ADAPTER = "default"  # the name peft gives the one adapter it loads
BASE = Stream(None)


@dataclass(frozen=True)
class ServedPoint:
    """How the adapter is served for one report: its knobs, and the strength they sit at on the
    line through the base (1: the manifest's knobs; None: an α, ω pair set directly)."""

    knobs: Knobs
    strength: float | None


@dataclass(frozen=True)
class ItemOutcomes:
    """Per item, in the order of the data: what paired comparisons (seeds, bootstrap) are made of."""

    policy_margins: list[float]  # per held-out pair, Σ log π_served/π_base of chosen minus rejected
    refused: list[bool]  # per request (held-out pair prompt)
    over_refused: list[bool]  # per neutral prompt
    correct: list[bool]  # per factual question


@dataclass(frozen=True)
class EvalReport:
    adapter: str
    method: str
    alpha: float
    omega: float
    strength: float | None
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
    per_item: ItemOutcomes

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class _Behaviour:
    """What one stream's greedy answers show."""

    refused: list[bool]
    over_refused: list[bool]
    correct: list[bool]
    mean_answer_tokens: float

    @classmethod
    def of(cls, answers: Answers, tokenizer: PreTrainedTokenizerBase, sets: EvalSets) -> _Behaviour:
        text = answers.texts(tokenizer)
        return cls(
            refused=[is_refusal(t) for t in text["requests"]],
            over_refused=[is_refusal(t) for t in text["neutral"]],
            correct=[_is_correct(t, accepted) for t, (_, accepted) in zip(text["replies"], sets.questions)],
            mean_answer_tokens=sum(map(len, answers.neutral)) / len(answers.neutral),
        )


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
    points: Sequence[ServedPoint] = (),
    show_progress: bool = True,
) -> list[EvalReport]:
    """Every metric of the report, per served point of the adapter at `adapter_dir` (no points: as
    its manifest serves it) or, for None, one report of the base model."""
    base, served = evaluate_beside_base(loaded, adapter_dir, pairs, sets, max_length, points, show_progress)
    return served or [base]


def evaluate_beside_base(
    loaded: LoadedModel,
    adapter_dir: Path | None,
    pairs: Sequence[PreferencePair],
    sets: EvalSets,
    max_length: int,
    points: Sequence[ServedPoint] = (),
    show_progress: bool = True,
) -> tuple[EvalReport, list[EvalReport]]:
    """The base model's report and one report per served point of the adapter (none for None).

    The points share every forward and decode: one scoring pass over the pairs, one decode whose
    streams are the base and each point. Answers end at the model's stop ids, as in serving; the
    policy, its KL and answers, and the Q-adapter's reward all use the point's knobs.
    """
    adapter = validate(adapter_dir, loaded.info) if adapter_dir is not None else None
    if adapter is None and points:
        raise InvalidData("knobs apply to an adapter, not to the base model")
    points = list(points) or ([ServedPoint(adapter.manifest.knobs, 1.0)] if adapter else [])
    scored = PeftModel.from_pretrained(loaded.model, str(adapter_dir)).eval() if adapter else loaded.model
    try:
        return _evaluate_points(loaded, scored, adapter, pairs, sets, max_length, points, show_progress)
    finally:
        if isinstance(scored, PeftModel):
            scored.unload()  # the LoRA layers out of the base model again: the next adapter finds it bare


def _evaluate_points(
    loaded: LoadedModel,
    scored: PreTrainedModel | PeftModel,
    adapter: ValidatedAdapter | None,
    pairs: Sequence[PreferencePair],
    sets: EvalSets,
    max_length: int,
    points: Sequence[ServedPoint],
    show_progress: bool,
) -> tuple[EvalReport, list[EvalReport]]:
    knobs = [p.knobs for p in points]
    policy, reward = served_margins(
        scored, loaded.tokenizer, adapter, pairs, max_length, loaded.pad_token_id, knobs, show_progress
    )
    streams = [BASE, *(Stream(ADAPTER, k) for k in knobs)]
    answers = Answers.generate(loaded, ModelRows(scored), streams, pairs, sets, show_progress)
    seen = [_Behaviour.of(a, loaded.tokenizer, sets) for a in answers]
    neutral_ids = [user_prompt_ids(loaded.tokenizer, p) for p in sets.neutral_prompts]
    kls = kl_to_base(scored, neutral_ids, answers[0].neutral, knobs, loaded.pad_token_id) if adapter else []
    base = _report(None, ServedPoint(PLAIN, 0.0), torch.zeros(len(pairs)), None, 0.0, seen[0], seen[0], sets)
    reports = []
    for i, point in enumerate(points):
        point_reward = None if reward is None else reward[:, i]
        reports.append(_report(adapter, point, policy[:, i], point_reward, kls[i], seen[i + 1], seen[0], sets))
    return base, reports


def _report(
    adapter: ValidatedAdapter | None,
    point: ServedPoint,
    policy: torch.Tensor,
    reward: torch.Tensor | None,
    kl: float,
    own: _Behaviour,
    base: _Behaviour,
    sets: EvalSets,
) -> EvalReport:
    return EvalReport(
        adapter=adapter.name if adapter else "base",
        method=adapter_method(adapter),
        alpha=point.knobs.alpha,
        omega=point.knobs.omega,
        strength=point.strength,
        num_pairs=len(policy),
        policy_accuracy=ranked_share(policy),
        policy_margin=float(policy.mean()),
        reward_accuracy=None if reward is None else ranked_share(reward),
        reward_margin=None if reward is None else float(reward.mean()),
        kl_to_base=kl,
        retention_accuracy=_share(own.correct),
        base_retention_accuracy=_share(base.correct),
        mean_answer_tokens=own.mean_answer_tokens,
        base_mean_answer_tokens=base.mean_answer_tokens,
        refusal_rate=_share(own.refused),
        base_refusal_rate=_share(base.refused),
        over_refusal_rate=_share(own.over_refused),
        base_over_refusal_rate=_share(base.over_refused),
        num_refusal_prompts=len(own.refused),
        num_neutral_prompts=len(sets.neutral_prompts),
        num_questions=len(sets.questions),
        per_item=ItemOutcomes(policy.tolist(), own.refused, own.over_refused, own.correct),
    )


@torch.no_grad()
def kl_to_base(
    model: PeftModel,
    prompts: Sequence[list[int]],
    answers: Sequence[list[int]],
    points: Sequence[Knobs],
    pad_id: int,
    rows_per_batch: int = 8,
) -> list[float]:
    """Per served point, the mean over answer tokens of KL(π_custom ‖ π_base) at each state the
    answer passes through; one forward with and one without the adapter for every point."""
    totals, num_tokens = [0.0] * len(points), 0.0
    device = next(model.parameters()).device
    for start in range(0, len(prompts), rows_per_batch):
        rows = list(zip(prompts[start : start + rows_per_batch], answers[start : start + rows_per_batch]))
        batch = collate(rows, pad_id, device)
        q_logits = window_logits(model, batch)
        base = torch.log_softmax(base_window_logits(model, batch).float(), dim=-1)
        for i, knobs in enumerate(points):
            custom = torch.log_softmax(customised_logits(q_logits, base, knobs.alpha, knobs.omega), -1)
            per_state = (custom.exp() * (custom - base)).sum(-1)  # [rows, window]
            totals[i] += float((per_state * batch.action_mask).sum())
        num_tokens += float(batch.action_mask.sum())
    return [total / max(num_tokens, 1.0) for total in totals]


def _share(outcomes: Sequence[bool]) -> float:
    return sum(outcomes) / max(len(outcomes), 1)


def _is_correct(answer: str, accepted: Sequence[str]) -> bool:
    """Whether the answer names one of the accepted answers as a whole word (case-insensitive), so
    that "4" is not found in "14" nor "ice" in "rice"."""
    return any(re.search(rf"(?<!\w){re.escape(a)}(?!\w)", answer, re.IGNORECASE) for a in accepted)


def format_report(report: EvalReport) -> str:
    """A readable two-column table."""
    strength = "" if report.strength is None else f", strength {report.strength:g}"
    rows = [
        ("adapter", f"{report.adapter} ({report.method}, alpha {report.alpha:g}, omega {report.omega:g}{strength})"),
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
