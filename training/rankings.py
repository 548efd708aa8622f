"""Held-out preference pairs ranked by a margin per pair: the served policy's log-ratio to the base
(one yardstick for every method) and each method's own implicit reward."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields, replace

import torch
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from qadapter.adapters.format import ValidatedAdapter
from qadapter.core.knobs import Knobs
from qadapter.core.policy import sequence_rewards
from qadapter.training.data import PreferencePair, encode_pair
from qadapter.training.objectives import (
    Objective,
    log_ratios,
    log_ratios_of,
    margins,
    pair_rows,
    qadapter_token_rewards,
    token_rewards_of,
)
from qadapter.training.scoring import ResponseBatch, base_window_logits, collate, taken_logprobs, window_logits

PAIRS_PER_BATCH = 4


def adapter_method(adapter: ValidatedAdapter | None) -> str:
    if adapter is None:
        return "base"
    return str((adapter.manifest.training or {}).get("method", "qadapter"))


def reward_objective(adapter: ValidatedAdapter) -> Objective:
    """The Q-adapter's reward as it was trained (γ, V position, norm from its manifest), with its α, ω."""
    trained = ((adapter.manifest.training or {}).get("hyperparameters") or {}).get("objective") or {}
    known = {f.name for f in fields(Objective)} - {"method", "knobs"}
    return Objective(knobs=adapter.manifest.knobs, **{k: v for k, v in trained.items() if k in known})


def ranked_share(pair_margins: torch.Tensor) -> float:
    """Share of pairs whose margin ranks the chosen response first; a tie counts half."""
    return float(((pair_margins > 0).float() + 0.5 * (pair_margins == 0).float()).mean())


def pair_margins(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    adapter: ValidatedAdapter | None,
    pairs: Sequence[PreferencePair],
    max_length: int,
    pad_id: int,
    show_progress: bool = True,
) -> torch.Tensor:
    """Implicit reward of chosen minus rejected, per pair `[pairs]`: the Q-adapter's R(y), SFT's and
    DPO's Σ log π/π_base, the base's Σ log π_base."""
    method = adapter_method(adapter)

    def rewards(batch: ResponseBatch) -> torch.Tensor:
        if adapter is None:
            return (taken_logprobs(base_window_logits(model, batch), batch.actions) * batch.action_mask).sum(-1)
        if method == "qadapter":
            objective = reward_objective(adapter)
            return sequence_rewards(
                qadapter_token_rewards(model, batch, objective), batch.action_mask, objective.reward_norm
            )
        return log_ratios(model, batch, adapter.manifest.knobs)

    return _per_pair(model, tokenizer, pairs, max_length, pad_id, show_progress, rewards)


def served_margins(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    adapter: ValidatedAdapter | None,
    pairs: Sequence[PreferencePair],
    max_length: int,
    pad_id: int,
    points: Sequence[Knobs] = (),
    show_progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per pair and per served point `[pairs, points]`, chosen minus rejected: the served policy's
    Σ log π_served/π_base, the yardstick of every method (0 for the base model), and a Q-adapter's
    reward R(y) at the same knobs (None for the others). Each batch runs one forward with and one
    without the adapter, whatever the number of points; no points: the manifest's knobs."""
    if adapter is None:
        return torch.zeros(len(pairs), max(len(points), 1)), None
    points = list(points) or [adapter.manifest.knobs]
    trained = reward_objective(adapter) if adapter_method(adapter) == "qadapter" else None

    def scores(batch: ResponseBatch) -> torch.Tensor:
        q_logits, base_logits = window_logits(model, batch), base_window_logits(model, batch)
        policy = [log_ratios_of(q_logits, base_logits, batch, knobs) for knobs in points]
        if trained is None:
            return torch.stack(policy, dim=-1)
        rewards = [
            sequence_rewards(
                token_rewards_of(q_logits, base_logits, batch, replace(trained, knobs=knobs)),
                batch.action_mask,
                trained.reward_norm,
            )
            for knobs in points
        ]
        return torch.stack(policy + rewards, dim=-1)

    both = _per_pair(model, tokenizer, pairs, max_length, pad_id, show_progress, scores)  # [pairs, 1 or 2 × points]
    return both[:, : len(points)], None if trained is None else both[:, len(points) :]


@torch.no_grad()
def _per_pair(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[PreferencePair],
    max_length: int,
    pad_id: int,
    show_progress: bool,
    score: Callable[[ResponseBatch], torch.Tensor],
) -> torch.Tensor:
    """score(chosen) − score(rejected) per pair, `score` giving one value (or a row of them) per batch row."""
    device = next(model.parameters()).device
    per_batch = []
    for start in tqdm(range(0, len(pairs), PAIRS_PER_BATCH), desc="preference pairs", disable=not show_progress):
        encoded = [encode_pair(tokenizer, p, max_length) for p in pairs[start : start + PAIRS_PER_BATCH]]
        per_batch.append(margins(score(collate(pair_rows(encoded), pad_id, device))).float().cpu())
    return torch.cat(per_batch)
