"""The training loss as the full-window scoring functions give it: the base run again on every
micro-batch, logits at every window position. What `training/step.py` must equal (its tests) and
beat (bench/training.py)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from qadapter.core.knobs import PLAIN
from qadapter.core.policy import preference_loss
from qadapter.training.data import EncodedPair
from qadapter.training.objectives import Model, Objective, log_ratios, margins, pair_rows, qadapter_token_rewards
from qadapter.training.scoring import collate, taken_logprobs, window_logits


def full_window_loss(model: Model, pairs: Sequence[EncodedPair], objective: Objective, pad_id: int) -> torch.Tensor:
    device = next(model.parameters()).device
    if objective.method == "sft":
        batch = collate([(p.prompt_ids, p.chosen_ids) for p in pairs], pad_id, device)
        logprobs = taken_logprobs(window_logits(model, batch), batch.actions)
        return -(logprobs * batch.action_mask).sum() / batch.action_mask.sum()
    batch = collate(pair_rows(pairs), pad_id, device)
    if objective.method == "dpo":
        return -F.logsigmoid(objective.beta * margins(log_ratios(model, batch, PLAIN))).mean()
    rewards, mask = qadapter_token_rewards(model, batch, objective), batch.action_mask
    return preference_loss(
        rewards[0::2], mask[0::2], rewards[1::2], mask[1::2], objective.beta, objective.reward_norm
    ).loss
