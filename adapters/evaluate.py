"""`qadapter eval`: did the adapter learn the preference, and how much of the base model did it keep?

- `preference_accuracy` / `reward_margin`: pairs ranked by the implicit reward the method trains —
  R(y) of docs/design.md §1 for a Q-adapter, Σ log π_custom/π_base for SFT and DPO, Σ log π_base for the base;
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
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from qadapter.adapters.data import PreferencePair, encode_pair
from qadapter.adapters.format import MANIFEST_FILE, Manifest, ValidatedAdapter, read_manifest, validate
from qadapter.adapters.objectives import Objective, log_ratios, margins, pair_rows, qadapter_token_rewards
from qadapter.adapters.scoring import ModelRows, base_window_logits, collate, taken_logprobs, window_logits
from qadapter.core.chat import user_prompt_ids
from qadapter.core.decode import DecodeParams, Stream, decode
from qadapter.core.errors import InvalidData
from qadapter.core.knobs import PLAIN, Knobs
from qadapter.core.model import LoadedModel
from qadapter.core.policy import customised_logits, sequence_rewards

EVAL_SETS = Path(__file__).parent / "eval_sets"
PAIRS_PER_BATCH = 4
ADAPTER = "default"  # the name peft gives the one adapter it loads
BASE = Stream(None)


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
                raise InvalidData(
                    f'{questions_file}: line {number}: expected {{"question": str, "answers": [str, ...]}}'
                ) from None
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
    margin_per_pair = pair_margins(
        scored, loaded.tokenizer, adapter, pairs, max_length, loaded.pad_token_id, show_progress
    )

    streams = [BASE, served] if adapter else [BASE]
    rows = ModelRows(scored)
    base_neutral, own_neutral = _answers(
        loaded, rows, streams, sets.neutral_prompts, sets.max_answer_tokens, show_progress
    )
    questions = [q for q, _ in sets.questions]
    base_replies, own_replies = _answers(loaded, rows, streams, questions, sets.max_question_tokens, show_progress)
    neutral_ids = [user_prompt_ids(loaded.tokenizer, p) for p in sets.neutral_prompts]
    kl = kl_to_base(scored, neutral_ids, base_neutral, served.knobs, loaded.pad_token_id) if adapter else 0.0
    shown = served.knobs if adapter else PLAIN
    return EvalReport(
        adapter=adapter.name if adapter else "base",
        method=adapter_method(adapter),
        alpha=shown.alpha,
        omega=shown.omega,
        num_pairs=len(pairs),
        preference_accuracy=float((margin_per_pair > 0).float().mean()),
        reward_margin=float(margin_per_pair.mean()),
        kl_to_base=kl,
        retention_accuracy=_correct(loaded.tokenizer, own_replies, sets.questions),
        base_retention_accuracy=_correct(loaded.tokenizer, base_replies, sets.questions),
        mean_answer_tokens=sum(map(len, own_neutral)) / len(own_neutral),
        base_mean_answer_tokens=sum(map(len, base_neutral)) / len(base_neutral),
        num_neutral_prompts=len(sets.neutral_prompts),
        num_questions=len(sets.questions),
    )


def _answers(
    loaded: LoadedModel,
    rows: ModelRows,
    streams: list[Stream],
    prompts: Sequence[str],
    max_tokens: int,
    show_progress: bool,
) -> tuple[list[list[int]], list[list[int]]]:
    """Greedy answers to user prompts of the first and of the last stream, from one decode."""
    ids = [user_prompt_ids(loaded.tokenizer, p) for p in prompts]
    label = "answers" if show_progress else None
    params = DecodeParams(max_tokens)
    decoded = decode(rows, ids, streams, params, loaded.stop_token_ids, loaded.pad_token_id, progress=label)
    return [d[0] for d in decoded], [d[-1] for d in decoded]


def _served_adapter(loaded: LoadedModel, adapter_dir: Path | None, knobs: Knobs | None) -> ValidatedAdapter | None:
    """The adapter at `adapter_dir` (None: the base model), its manifest saying `knobs` when given."""
    adapter = validate(adapter_dir, loaded.info) if adapter_dir is not None else None
    if knobs is None:
        return adapter
    if adapter is None:
        raise InvalidData("knobs apply to an adapter, not to the base model")
    return replace(adapter, manifest=adapter.manifest.model_copy(update={"alpha": knobs.alpha, "omega": knobs.omega}))


def adapter_method(adapter: ValidatedAdapter | None) -> str:
    if adapter is None:
        return "base"
    return str((adapter.manifest.training or {}).get("method", "qadapter"))


def reward_objective(adapter: ValidatedAdapter) -> Objective:
    """The Q-adapter's reward as it was trained (γ, V position, norm from its manifest), with its α, ω."""
    trained = ((adapter.manifest.training or {}).get("hyperparameters") or {}).get("objective") or {}
    known = {f.name for f in fields(Objective)} - {"method", "knobs"}
    return Objective(knobs=adapter.manifest.knobs, **{k: v for k, v in trained.items() if k in known})


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
        encoded = [encode_pair(tokenizer, p, max_length) for p in pairs[start : start + PAIRS_PER_BATCH]]
        batch = collate(pair_rows(encoded), pad_id, device)
        if adapter is None:
            rewards = (taken_logprobs(base_window_logits(model, batch), batch.actions) * batch.action_mask).sum(-1)
        elif method == "qadapter":
            objective = reward_objective(adapter)
            token = qadapter_token_rewards(model, batch, objective)
            rewards = sequence_rewards(token, batch.action_mask, objective.reward_norm)
        else:
            rewards = log_ratios(model, batch, adapter.manifest.knobs)
        per_batch.append(margins(rewards).float().cpu())
    return torch.cat(per_batch)


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


def _correct(
    tokenizer: PreTrainedTokenizerBase, answers: Sequence[list[int]], questions: Sequence[tuple[str, list[str]]]
) -> float:
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
        (
            "retention accuracy",
            f"{report.retention_accuracy:.3f}  (base {report.base_retention_accuracy:.3f}, {report.num_questions} questions)",
        ),
        ("mean answer tokens", f"{report.mean_answer_tokens:.1f}  (base {report.base_mean_answer_tokens:.1f})"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
