"""The default training objective depends on the served policy alone: a uniform offset on Q at the
prompt's last state (s₀, shared by the chosen and the rejected response) changes no served
probability, so it must not move the loss; the derivation's V(s_{t+1}) form lets it."""

from __future__ import annotations

import pytest
import torch

from qadapter.core.policy import customised_logits, preference_loss, token_rewards
from qadapter.training.objectives import Objective

VOCAB = 7


def loss_of(
    q: torch.Tensor, base: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor, objective: Objective
) -> float:
    """The Q-adapter loss of one pair: row 0 chosen, row 1 rejected."""
    knobs = objective.knobs
    rewards = token_rewards(q, base, actions, mask, knobs.alpha, knobs.omega, objective.gamma, objective.value_position)
    figures = preference_loss(rewards[0:1], mask[0:1], rewards[1:2], mask[1:2], objective.beta, objective.reward_norm)
    return float(figures.loss)


def pair_with_offset_at_s0(offset: float) -> tuple[torch.Tensor, ...]:
    """A chosen response of 2 tokens and a rejected one of 5 (lengths differ), from the same s₀ at
    position 0; `offset` is added to every Q(s₀, ·)."""
    torch.manual_seed(0)
    q, base = torch.randn(2, 5, VOCAB) * 2, torch.randn(2, 5, VOCAB) * 2
    base[1, 0], q[1, 0] = base[0, 0], q[0, 0]  # one prompt: the same first state
    q[:, 0] += offset
    actions = torch.randint(0, VOCAB, (2, 5))
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0], [1.0] * 5])
    return q, base, actions, mask


def test_an_offset_on_q_at_s0_changes_no_served_probability() -> None:
    q, base, _, _ = pair_with_offset_at_s0(0.0)
    shifted, _, _, _ = pair_with_offset_at_s0(5.0)
    knobs = Objective().knobs
    served = [torch.log_softmax(customised_logits(x, base, knobs.alpha, knobs.omega), -1) for x in (q, shifted)]
    assert served[0] == pytest.approx(served[1], abs=1e-5)


def test_the_default_loss_does_not_move_with_it() -> None:
    objective = Objective()
    assert objective.reward_norm == "length"  # per-length normalisation: where the V(s₀) term would leak
    assert loss_of(*pair_with_offset_at_s0(5.0), objective) == pytest.approx(
        loss_of(*pair_with_offset_at_s0(0.0), objective), abs=1e-5
    )


def test_the_derivations_form_does() -> None:
    objective = Objective(value_position="next")
    assert loss_of(*pair_with_offset_at_s0(5.0), objective) != pytest.approx(
        loss_of(*pair_with_offset_at_s0(0.0), objective), abs=1e-3
    )
