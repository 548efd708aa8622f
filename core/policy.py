"""The Q-Adapter math (docs/design.md §1, arXiv 2407.03856) as pure tensor functions.

Shapes: logits are `[..., vocab]` (usually `[rows, vocab]` when decoding, `[batch, seq, vocab]` when
training). `alpha`/`omega` are a float or one value per leading row (`[rows]` / `[batch]`).
Everything is computed in float32, whatever dtype the model runs in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from qadapter.core.knobs import DEFAULT_ALPHA, DEFAULT_OMEGA, Knobs

PerRow = float | torch.Tensor

DEFAULT_GAMMA = 1.0
DEFAULT_BETA = 0.1

# Where V is read in the per-token reward: "same" is the paper's public code, which reads V(s_t) at
# the position of Q (r = α·log π_custom − ω·log π_base: the served policy alone); "next" is the
# derivation, r = Q(s_t,a_t) - γ·V(s_{t+1}), which leaves a V(s_0) in the sequence's sum.
ValuePosition = Literal["next", "same"]
# How a sequence's summed reward is normalised: by its own response length (ours), or by the
# micro-batch's longest response ("padded"; the paper's public code divides by the whole padded row,
# prompt included: a per-batch constant as well, a larger one).
RewardNorm = Literal["length", "padded"]


def _broadcast(x: PerRow, like: torch.Tensor) -> PerRow:
    """A per-row tensor reshaped to broadcast over `like`'s trailing dims; floats pass through."""
    if isinstance(x, torch.Tensor):
        x = x.to(device=like.device, dtype=torch.float32)
        return x.reshape(x.shape + (1,) * (like.dim() - x.dim()))
    return x


def customised_logits(
    q_logits: torch.Tensor,
    base_logits: torch.Tensor,
    alpha: PerRow = DEFAULT_ALPHA,
    omega: PerRow = DEFAULT_OMEGA,
) -> torch.Tensor:
    """logits_custom = (Q + ω·log_softmax(base_logits)) / α, in float32; ω = 0 is exact (Q / α), even
    where a base log-probability is -inf (where 0·(-inf) would be NaN)."""
    q = q_logits.float()
    base_logprobs = torch.log_softmax(base_logits.float(), dim=-1)
    weight = torch.as_tensor(_broadcast(omega, q), dtype=q.dtype, device=q.device)
    mixed = torch.where(weight == 0, 0.0, weight * base_logprobs)
    return (q + mixed) / _broadcast(alpha, q)


def stream_scores(
    logits: torch.Tensor, q_rows: list[int], base_rows: list[int], knobs: list[Knobs | None]
) -> torch.Tensor:
    """Float32 scores `[streams, vocab]` of streams whose Q and base rows of `logits` `[rows, vocab]` are given.

    A Q-adapter stream (its knobs) has an adapter row and a base row; a base stream (None) has one row,
    both its rows, scored as a Q-adapter with Q = base, ω = 0, α = 1: exactly its own logits.
    """
    alphas = torch.tensor([1.0 if k is None else k.alpha for k in knobs], device=logits.device)
    omegas = torch.tensor([0.0 if k is None else k.omega for k in knobs], device=logits.device)
    return customised_logits(logits[q_rows], logits[base_rows], alphas, omegas)


def value(custom_logits: torch.Tensor, alpha: PerRow = DEFAULT_ALPHA) -> torch.Tensor:
    """V(s) = α·logsumexp(logits_custom(s)); shape `[...]` (vocab reduced)."""
    logits = custom_logits.float()
    return _broadcast(alpha, logits[..., 0]) * torch.logsumexp(logits, dim=-1)


def token_rewards(
    q_logits: torch.Tensor,
    base_logits: torch.Tensor,
    actions: torch.Tensor,
    action_mask: torch.Tensor,
    alpha: PerRow = DEFAULT_ALPHA,
    omega: PerRow = DEFAULT_OMEGA,
    gamma: float = DEFAULT_GAMMA,
    value_position: ValuePosition = "same",
) -> torch.Tensor:
    """Per-token rewards r(s_t, a_t) = Q(s_t, a_t) − V(s_t) ("same"), or Q(s_t, a_t) − γ·V(s_{t+1})
    ("next"), zero outside the mask.

    `q_logits[:, t]` and `base_logits[:, t]` are `[batch, seq, vocab]` scores of state s_t;
    `actions[:, t]` (`[batch, seq]`) is the token taken there; `action_mask` marks response actions.
    The state after the last masked action is terminal, so its value is 0.
    """
    q_taken = q_logits.float().gather(-1, actions.unsqueeze(-1)).squeeze(-1)  # [batch, seq]
    values = value(customised_logits(q_logits, base_logits, alpha, omega), alpha)  # [batch, seq]
    return rewards_of(q_taken, values, action_mask, gamma, value_position)


def rewards_of(
    q_taken: torch.Tensor,
    values: torch.Tensor,
    action_mask: torch.Tensor,
    gamma: float = DEFAULT_GAMMA,
    value_position: ValuePosition = "same",
) -> torch.Tensor:
    """`token_rewards` from Q(s_t, a_t) and V(s_t), `[batch, seq]` each (what a caller that scores
    only the response's states lays out on the grid)."""
    mask = action_mask.float()
    if value_position == "same":
        subtracted = values
    else:
        subtracted = torch.zeros_like(values)
        subtracted[:, :-1] = values[:, 1:] * mask[:, 1:]
    return (q_taken - gamma * subtracted) * mask


def sequence_rewards(rewards: torch.Tensor, action_mask: torch.Tensor, norm: RewardNorm = "length") -> torch.Tensor:
    """R(y) per sequence (`[batch]`): summed token rewards over the response, normalised."""
    mask = action_mask.float()
    total = (rewards * mask).sum(dim=-1)
    if norm == "padded":
        return total / mask.shape[-1]
    return total / mask.sum(dim=-1).clamp(min=1.0)


@dataclass(frozen=True)
class PreferenceLoss:
    """The training loss and the figures the trainer reports."""

    loss: torch.Tensor  # scalar, differentiable
    accuracy: torch.Tensor  # share of pairs with R(chosen) > R(rejected)
    margin: torch.Tensor  # mean R(chosen) − R(rejected)


def preference_loss(
    chosen_rewards: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_rewards: torch.Tensor,
    rejected_mask: torch.Tensor,
    beta: float = DEFAULT_BETA,
    norm: RewardNorm = "length",
) -> PreferenceLoss:
    """−log σ(R(c) − R(j)) + β·mean_t r², the mean over every response token of both sequences."""
    margin = sequence_rewards(chosen_rewards, chosen_mask, norm) - sequence_rewards(
        rejected_rewards, rejected_mask, norm
    )
    squared = (chosen_rewards**2 * chosen_mask).sum() + (rejected_rewards**2 * rejected_mask).sum()
    num_tokens = (chosen_mask.sum() + rejected_mask.sum()).clamp(min=1.0)
    loss = -F.logsigmoid(margin).mean() + beta * squared / num_tokens
    return PreferenceLoss(loss=loss, accuracy=(margin > 0).float().mean().detach(), margin=margin.mean().detach())
