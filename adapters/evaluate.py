"""`qadapter eval`: did the adapter learn the preference, and how much of the base model did it keep?

- `preference_accuracy` / `reward_margin`: pairs ranked by the implicit reward the method trains —
  R(y) of DESIGN.md §1 for a Q-adapter, Σ log π_custom/π_base for SFT and DPO, Σ log π_base for the base;
- `kl_to_base`: mean per-token KL(π_custom ‖ π_base) along the base's greedy answers to neutral prompts;
- `retention_accuracy`: short factual questions answered (substring match) with the adapter, beside the
  base's own `base_retention_accuracy`;
- `mean_answer_tokens`: greedy answer length on the neutral prompts, beside the base's (a length preference
  shows up here).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from peft import PeftModel
from pydantic import ValidationError
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from adapters.base import BaseModelInfo
from adapters.bounds import MAX_ALPHA, MAX_OMEGA, MIN_ALPHA
from adapters.data import PreferencePair, chat_prompt_ids, encode_pair
from adapters.decoding import BASE, Policy, generate
from adapters.errors import InvalidData
from adapters.format import (
    MANIFEST_FILE,
    Manifest,
    ValidatedAdapter,
    read_manifest,
    validate,
)
from adapters.objectives import (
    Objective,
    log_ratios,
    margins,
    pad_id_of,
    pair_rows,
    qadapter_token_rewards,
)
from adapters.policy import customised_logits, sequence_rewards
from adapters.scoring import base_window_logits, collate, taken_logprobs, window_logits

EVAL_SETS = Path(__file__).parent / "eval_sets"
PAIRS_PER_BATCH = 4


@dataclass(frozen=True)
class EvalSets:
    """Neutral prompts (for KL and answer length) and factual questions with accepted answers."""

    neutral_prompts: list[str]
    questions: list[tuple[str, list[str]]]
    max_answer_tokens: int = 128  # greedy answers to the neutral prompts
    max_question_tokens: int = 32  # greedy answers to the questions

    @classmethod
    def load(cls, neutral_prompts: Path | None = None, questions: Path | None = None, **limits: int) -> EvalSets:
        prompts_file = neutral_prompts or EVAL_SETS / "neutral_prompts.txt"
        questions_file = questions or EVAL_SETS / "factual_questions.jsonl"
        try:
            prompts = [line.strip() for line in prompts_file.read_text(encoding="utf-8").split("\n") if line.strip()]
            question_lines = questions_file.read_text(encoding="utf-8").split("\n")
        except OSError as exc:
            raise InvalidData(f"cannot read {exc.filename}: {exc.strerror}") from None
        parsed = []
        for number, line in enumerate(question_lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                accepted = row["answers"]
                if not isinstance(accepted, list) or not all(isinstance(a, str) and a for a in accepted):
                    raise TypeError
                parsed.append((str(row["question"]), accepted))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise InvalidData(f'{questions_file}: line {number}: expected {{"question": str, "answers": [str, ...]}}') from None
        if not prompts or not parsed:
            raise InvalidData("the neutral prompts and the questions must each hold at least one entry")
        return cls(prompts, parsed, **limits)


@dataclass(frozen=True)
class EvalReport:
    adapter: str
    method: str
    alpha: float
    omega: float
    num_pairs: int
    preference_accuracy: float
    reward_margin: float
    kl_to_base: float
    retention_accuracy: float
    base_retention_accuracy: float
    mean_answer_tokens: float
    base_mean_answer_tokens: float
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
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    info: BaseModelInfo,
    adapter_dir: Path | None,
    pairs: Sequence[PreferencePair],
    sets: EvalSets,
    max_length: int,
    stop_ids: frozenset[int],
    show_progress: bool = True,
    serving: tuple[float, float] | None = None,
) -> EvalReport:
    """Every metric of the report, for the adapter at `adapter_dir` or (None) the base model.

    `stop_ids` end an answer, as in serving: the generation config's end ids and the tokenizer's.
    `serving` = (α, ω) evaluates the adapter served with those instead of its manifest's, as a request
    that sets them is served: the policy, its KL and answers, and the Q-adapter's reward all use them.
    """
    adapter = validate(adapter_dir, info) if adapter_dir is not None else None
    if serving is not None:
        if adapter is None:
            raise InvalidData("--alpha/--omega apply to an adapter, not to the base model")
        alpha, omega = serving
        try:  # validated as a manifest that said so would be: the same bounds
            served = Manifest.model_validate(adapter.manifest.model_dump() | {"alpha": alpha, "omega": omega})
        except ValidationError:
            raise InvalidData(
                f"cannot serve with alpha {alpha:g}, omega {omega:g}: alpha must be in [{MIN_ALPHA:g}, {MAX_ALPHA:g}] "
                f"and omega in [0, {MAX_OMEGA:g}]"
            ) from None
        adapter = replace(adapter, manifest=served)
    scored = PeftModel.from_pretrained(model, str(adapter_dir)).eval() if adapter else model
    policy = Policy(True, adapter.manifest.alpha, adapter.manifest.omega) if adapter else BASE
    method = adapter_method(adapter)
    pad_id = pad_id_of(tokenizer)
    margin_per_pair = pair_margins(scored, tokenizer, adapter, pairs, max_length, pad_id, show_progress)

    def answers(prompts: Sequence[str], with_policy: Policy, max_tokens: int) -> list[list[int]]:
        label = f"{'adapter' if with_policy.use_adapter else 'base'} answers" if show_progress else None
        return generate(scored, _chat_ids(tokenizer, prompts), with_policy, max_tokens, stop_ids, pad_id, progress=label)

    base_neutral = answers(sets.neutral_prompts, BASE, sets.max_answer_tokens)
    own_neutral = answers(sets.neutral_prompts, policy, sets.max_answer_tokens) if adapter else base_neutral
    questions = [q for q, _ in sets.questions]
    base_correct = _correct(tokenizer, answers(questions, BASE, sets.max_question_tokens), sets.questions)
    own_correct = (
        _correct(tokenizer, answers(questions, policy, sets.max_question_tokens), sets.questions)
        if adapter else base_correct
    )
    kl = kl_to_base(scored, _chat_ids(tokenizer, sets.neutral_prompts), base_neutral, policy, pad_id) if adapter else 0.0
    return EvalReport(
        adapter=adapter.name if adapter else "base",
        method=method,
        alpha=policy.alpha if adapter else 1.0,
        omega=policy.omega if adapter else 0.0,
        num_pairs=len(pairs),
        preference_accuracy=float((margin_per_pair > 0).float().mean()),
        reward_margin=float(margin_per_pair.mean()),
        kl_to_base=kl,
        retention_accuracy=own_correct,
        base_retention_accuracy=base_correct,
        mean_answer_tokens=sum(map(len, own_neutral)) / len(own_neutral),
        base_mean_answer_tokens=sum(map(len, base_neutral)) / len(base_neutral),
        num_neutral_prompts=len(sets.neutral_prompts),
        num_questions=len(sets.questions),
    )


def _chat_ids(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[list[int]]:
    return [chat_prompt_ids(tokenizer, [{"role": "user", "content": p}]) for p in prompts]


def adapter_method(adapter: ValidatedAdapter | None) -> str:
    if adapter is None:
        return "base"
    return str((adapter.manifest.training or {}).get("method", "qadapter"))


def reward_objective(adapter: ValidatedAdapter) -> Objective:
    """The Q-adapter's reward as it was trained (γ, V position, norm from its manifest), with its α, ω."""
    trained = ((adapter.manifest.training or {}).get("hyperparameters") or {}).get("objective") or {}
    known = {f.name for f in fields(Objective)} - {"method", "alpha", "omega"}
    return Objective(
        alpha=adapter.manifest.alpha, omega=adapter.manifest.omega,
        **{k: v for k, v in trained.items() if k in known},
    )


@torch.no_grad()
def pair_margins(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    adapter: ValidatedAdapter | None,
    pairs: Sequence[PreferencePair],
    max_length: int,
    pad_id: int,
    show_progress: bool = True,
) -> torch.Tensor:
    """Implicit reward of chosen minus rejected, per pair `[pairs]`."""
    method = adapter_method(adapter)
    device = next(model.parameters()).device
    per_batch = []
    for start in tqdm(range(0, len(pairs), PAIRS_PER_BATCH), desc="preference pairs", disable=not show_progress):
        encoded = [encode_pair(tokenizer, p, max_length) for p in pairs[start:start + PAIRS_PER_BATCH]]
        batch = collate(pair_rows(encoded), pad_id, device)
        if adapter is None:
            rewards = (taken_logprobs(base_window_logits(model, batch), batch.actions) * batch.action_mask).sum(-1)
        elif method == "qadapter":
            objective = reward_objective(adapter)
            token = qadapter_token_rewards(model, batch, objective)
            rewards = sequence_rewards(token, batch.action_mask, objective.reward_norm)
        else:
            rewards = log_ratios(model, batch, adapter.manifest.alpha, adapter.manifest.omega)
        per_batch.append(margins(rewards).float().cpu())
    return torch.cat(per_batch)


@torch.no_grad()
def kl_to_base(
    model: PeftModel,
    prompts: Sequence[list[int]],
    answers: Sequence[list[int]],
    policy: Policy,
    pad_id: int,
    rows_per_batch: int = 8,
) -> float:
    """Mean over answer tokens of KL(π_custom ‖ π_base) at each state the answer passes through."""
    total, num_tokens = 0.0, 0.0
    device = next(model.parameters()).device
    for start in range(0, len(prompts), rows_per_batch):
        rows = list(zip(prompts[start:start + rows_per_batch], answers[start:start + rows_per_batch]))
        batch = collate(rows, pad_id, device)
        base = torch.log_softmax(base_window_logits(model, batch).float(), dim=-1)
        custom = torch.log_softmax(customised_logits(window_logits(model, batch), base, policy.alpha, policy.omega), -1)
        per_state = (custom.exp() * (custom - base)).sum(-1)  # [rows, window]
        total += float((per_state * batch.action_mask).sum())
        num_tokens += float(batch.action_mask.sum())
    return total / max(num_tokens, 1.0)


def _correct(tokenizer: PreTrainedTokenizerBase, answers: Sequence[list[int]], questions: Sequence[tuple[str, list[str]]]) -> float:
    """Share of answers naming one of the question's accepted answers as a whole word (case-insensitive).

    Whole words, so that "4" is not found in "14" nor "ice" in "rice".
    """
    hits = 0
    for ids, (_, accepted) in zip(answers, questions):
        text = tokenizer.decode(ids, skip_special_tokens=True)
        hits += any(re.search(rf"(?<!\w){re.escape(a)}(?!\w)", text, re.IGNORECASE) for a in accepted)
    return hits / len(questions)


def format_report(report: EvalReport) -> str:
    """A readable two-column table."""
    rows = [
        ("adapter", f"{report.adapter} ({report.method}, alpha {report.alpha:g}, omega {report.omega:g})"),
        ("preference accuracy", f"{report.preference_accuracy:.3f}  over {report.num_pairs} pairs"),
        ("reward margin (mean)", f"{report.reward_margin:.4f}"),
        ("KL to base (per token)", f"{report.kl_to_base:.4f}  over {report.num_neutral_prompts} neutral prompts"),
        ("retention accuracy",
         f"{report.retention_accuracy:.3f}  (base {report.base_retention_accuracy:.3f}, {report.num_questions} questions)"),
        ("mean answer tokens", f"{report.mean_answer_tokens:.1f}  (base {report.base_mean_answer_tokens:.1f})"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
