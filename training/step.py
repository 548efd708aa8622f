"""One training micro-batch, computed cheaply and exactly.

Two costs of the plain forward (`scoring.window_logits`) are avoided:
- the language-model head (576 × 49k for SmolLM2: a fifth of a token's work) runs only at the states
  that take a response action, not over the window's prompt positions;
- the frozen base is not run every step: `BaseCache` keeps, per training row, what the objective
  needs of it — its final hidden states at the response's states for a Q-adapter (the head turns
  them back into log π_base exactly), the summed log-probability of the response for DPO — computed
  once per dataset with the LoRA off.
The losses equal those of `objectives.qadapter_token_rewards` / `log_ratios` within float tolerance
(tests/unit/training/test_step.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from qadapter.core.errors import InvalidData
from qadapter.core.policy import customised_logits, preference_loss, rewards_of, sequence_rewards, value
from qadapter.training.data import EncodedPair
from qadapter.training.lower_layers import LowerLayers, LowerOutput, from_layer
from qadapter.training.objectives import Method, Model, Objective, StepFigures, margins, pair_rows
from qadapter.training.scoring import ResponseBatch, adapter_off, causal_lm, collate, taken_logprobs

# Config fields of architectures whose logits are not the head's output alone (Gemma 2, Cohere, Granite).
LOGIT_SCALING = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def compute_step(
    model: Model,
    pairs: Sequence[EncodedPair],
    objective: Objective,
    pad_id: int,
    base: torch.Tensor | None = None,
    lower: LowerOutput | None = None,
) -> StepFigures:
    """The method's loss on `pairs` (autograd through the adapter only) and its figures; `base` is
    the base's side of these pairs' rows (`BaseCache.rows`), computed here when None; `lower` their
    stream entering the first adapted layer (`LowerLayers.rows`), when the LoRA is on the top layers."""
    device = next(model.parameters()).device
    if objective.method == "sft":
        batch = collate([(p.prompt_ids, p.chosen_ids) for p in pairs], pad_id, device)
        loss = -policy_logprobs(model, batch, lower).mean()
        return StepFigures(loss=loss, num_pairs=len(pairs), num_correct=None)
    batch = collate(pair_rows(pairs), pad_id, device)
    if base is None:
        base = base_side(model, batch, objective.method, lower)
    if objective.method == "qadapter":
        mask = batch.action_mask
        q_logits = head(model, response_hidden(model, batch, lower))
        rewards = qadapter_rewards(q_logits, base.to(device), model, batch, objective)
        figures = preference_loss(
            rewards[0::2], mask[0::2], rewards[1::2], mask[1::2], objective.beta, objective.reward_norm
        )
        num_correct = int((margins(sequence_rewards(rewards.detach(), mask, objective.reward_norm)) > 0).sum())
        return StepFigures(figures.loss, len(pairs), num_correct)
    policy_sums = on_window(policy_logprobs(model, batch, lower), batch.action_mask).sum(dim=-1)
    dpo_margins = objective.beta * margins(policy_sums - base.to(device))
    return StepFigures(
        loss=-F.logsigmoid(dpo_margins).mean(), num_pairs=len(pairs), num_correct=int((dpo_margins > 0).sum())
    )


def qadapter_rewards(
    q_logits: torch.Tensor, base_hidden: torch.Tensor, model: Model, batch: ResponseBatch, objective: Objective
) -> torch.Tensor:
    """r(s_t, a_t) on the `[rows, window]` grid from Q at the response's states alone: the vocabulary-wide
    work (the customised policy and its value) runs on those states, not on the whole window."""
    with torch.no_grad():
        base_logits = head(model, base_hidden)
    knobs = objective.knobs
    actions = batch.actions[batch.action_mask.bool()]
    q_taken = q_logits.float().gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    values = value(customised_logits(q_logits, base_logits, knobs.alpha, knobs.omega), knobs.alpha)
    mask = batch.action_mask
    return rewards_of(
        on_window(q_taken, mask), on_window(values, mask), mask, objective.gamma, objective.value_position
    )


class BaseCache:
    """The frozen base's side (`base_side`) of every row of every training pair, computed once."""

    def __init__(self, by_pair: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self._by_pair = by_pair  # (chosen row, rejected row) per pair

    @classmethod
    def build(
        cls,
        model: Model,
        pairs: Sequence[EncodedPair],
        method: Method,
        pad_id: int,
        batch_size: int,
        show: bool,
        lower: LowerLayers | None = None,
    ) -> BaseCache | None:
        """The cache of `pairs` (None for SFT, which has no base side), `batch_size` pairs per forward."""
        if method == "sft":
            return None
        device = next(model.parameters()).device
        by_pair: list[tuple[torch.Tensor, torch.Tensor]] = []
        for start in tqdm(range(0, len(pairs), batch_size), desc="base scores", unit="batch", disable=not show):
            indices = range(start, min(start + batch_size, len(pairs)))
            rows = pair_rows([pairs[i] for i in indices])
            entering = None if lower is None else lower.rows(indices)
            side = base_side(model, collate(rows, pad_id, device), method, entering).cpu()
            per_row = side.split([len(r) for _, r in rows]) if method == "qadapter" else side.unbind()
            by_pair.extend(zip(per_row[0::2], per_row[1::2]))
        return cls(by_pair)

    def rows(self, pair_indices: Sequence[int]) -> torch.Tensor:
        """The base side of these pairs' interleaved rows, as `base_side` gives it for their batch."""
        rows = [row for i in pair_indices for row in self._by_pair[i]]
        return torch.cat(rows) if rows[0].dim() else torch.stack(rows)


@torch.no_grad()
def base_side(model: Model, batch: ResponseBatch, method: Method, lower: LowerOutput | None = None) -> torch.Tensor:
    """What a preference step needs of the frozen base: for a Q-adapter its final hidden states at the
    response's states (`[response tokens, hidden]`, row-major); for DPO Σ_t log π_base(a_t) per row."""
    with adapter_off(model):
        hidden = response_hidden(model, batch, lower)
        if method == "qadapter":
            return hidden.float()
        taken = taken_logprobs(head(model, hidden), batch.actions[batch.action_mask.bool()])
        return on_window(taken, batch.action_mask).sum(-1)


def policy_logprobs(model: Model, batch: ResponseBatch, lower: LowerOutput | None = None) -> torch.Tensor:
    """log π(a_t) of the model as it is (the LoRA on), at each response action (row-major)."""
    hidden = response_hidden(model, batch, lower)
    return taken_logprobs(head(model, hidden), batch.actions[batch.action_mask.bool()])


def response_hidden(model: Model, batch: ResponseBatch, lower: LowerOutput | None = None) -> torch.Tensor:
    """The final hidden states (after the last norm) of the states that take a response action,
    `[response tokens, hidden]` in row-major order; from `lower` up when given."""
    if lower is None:
        tokens, first_layer = {"input_ids": batch.input_ids}, 0
    else:
        tokens, first_layer = {"inputs_embeds": lower.hidden.to(batch.input_ids.device)}, lower.first_layer
    with from_layer(model, first_layer):
        out = causal_lm(model).get_decoder()(
            **tokens, attention_mask=batch.attention_mask, position_ids=batch.position_ids, use_cache=False
        )
    window = out.last_hidden_state[:, -(batch.window + 1) : -1]  # the last state takes no action
    return window[batch.action_mask.bool()]


def head(model: Model, hidden: torch.Tensor) -> torch.Tensor:
    """The language-model head: logits of final hidden states."""
    lm = causal_lm(model)
    scaled = [k for k in LOGIT_SCALING if getattr(lm.config, k, None) not in (None, 1.0)]
    if scaled:  # the head alone would not give the model's logits
        raise InvalidData(f"training needs a model whose logits are its head's output; this one sets {scaled}")
    return lm.get_output_embeddings()(hidden)


def on_window(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-major values at the mask's positions laid out on the `[rows, window, ...]` grid, zero elsewhere."""
    grid = values.new_zeros((*mask.shape, *values.shape[1:]))
    grid[mask.bool()] = values
    return grid
