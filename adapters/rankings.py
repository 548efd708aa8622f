"""Held-out preference pairs ranked by a margin per pair: the served policy's log-ratio to the base
(one yardstick for every method) and each method's own implicit reward."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields

import torch
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from qadapter.adapters.data import PreferencePair, encode_pair
from qadapter.adapters.format import ValidatedAdapter
from qadapter.adapters.objectives import Objective, log_ratios, margins, pair_rows, qadapter_token_rewards
from qadapter.adapters.scoring import ResponseBatch, base_window_logits, collate, taken_logprobs
from qadapter.core.knobs import Knobs
from qadapter.core.policy import sequence_rewards

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


def policy_margins(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[PreferencePair],
    max_length: int,
    pad_id: int,
    show_progress: bool,
    knobs: Knobs | None,
) -> torch.Tensor:
    """Σ log π_served(y)/π_base(y) of chosen minus rejected, per pair, π_served the policy `knobs`
    serve (None: the base model, whose log-ratio is 0 for every response)."""
    if knobs is None:
        return torch.zeros(len(pairs))
    return _per_pair(model, tokenizer, pairs, max_length, pad_id, show_progress, lambda b: log_ratios(model, b, knobs))


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
    """score(chosen) − score(rejected) per pair `[pairs]`, `score` giving one value per batch row."""
    device = next(model.parameters()).device
    per_batch = []
    for start in tqdm(range(0, len(pairs), PAIRS_PER_BATCH), desc="preference pairs", disable=not show_progress):
        encoded = [encode_pair(tokenizer, p, max_length) for p in pairs[start : start + PAIRS_PER_BATCH]]
        per_batch.append(margins(score(collate(pair_rows(encoded), pad_id, device))).float().cpu())
    return torch.cat(per_batch)
