"""The Q-Adapter math against hand-computed values (docs/design.md §1) and its invariants."""

from __future__ import annotations

import math

import pytest
import torch

from qadapter.core.policy import (
    customised_logits,
    preference_loss,
    sequence_rewards,
    token_rewards,
    value,
)


def _log_softmax(xs: list[float]) -> list[float]:
    top = math.log(sum(math.exp(x) for x in xs))
    return [x - top for x in xs]


def _logsumexp(xs: list[float]) -> float:
    return math.log(sum(math.exp(x) for x in xs))


Q = [2.0, 0.5, -1.0]
BASE = [0.0, 3.0, 1.0]


def _expected_custom(q: list[float], base: list[float], alpha: float, omega: float) -> list[float]:
    return [(qi + omega * bi) / alpha for qi, bi in zip(q, _log_softmax(base))]


def test_customised_logits_match_the_formula() -> None:
    got = customised_logits(torch.tensor([Q]), torch.tensor([BASE]), alpha=2.0, omega=0.5)
    assert got[0].tolist() == pytest.approx(_expected_custom(Q, BASE, alpha=2.0, omega=0.5))


def test_alpha_and_omega_are_not_interchangeable() -> None:
    right = customised_logits(torch.tensor([Q]), torch.tensor([BASE]), alpha=2.0, omega=0.5)
    swapped = customised_logits(torch.tensor([Q]), torch.tensor([BASE]), alpha=0.5, omega=2.0)
    assert not torch.allclose(right, swapped)


def test_omega_weights_the_base_log_probabilities_not_the_raw_logits() -> None:
    custom = customised_logits(torch.tensor([Q]), torch.tensor([BASE]), alpha=1.0, omega=1.0)
    raw = [q + b for q, b in zip(Q, BASE)]
    assert custom[0].tolist() != pytest.approx(raw)
    # The value exposes the log-softmax: logits shifted by a constant give the same softmax but a
    # different V, and V is what the rewards are built from.
    expected_v = _logsumexp(_expected_custom(Q, BASE, 1.0, 1.0))
    assert value(custom, 1.0).item() == pytest.approx(expected_v)
    assert value(custom, 1.0).item() != pytest.approx(_logsumexp(raw))


def test_omega_zero_alpha_one_is_softmax_of_q() -> None:
    q, base = torch.randn(4, 50), torch.randn(4, 50)
    custom = customised_logits(q, base, alpha=1.0, omega=0.0)
    torch.testing.assert_close(torch.softmax(custom, -1), torch.softmax(q, -1))


@pytest.mark.parametrize("alpha", [0.1, 1.0, 3.0])
@pytest.mark.parametrize("omega", [0.0, 0.01, 1.0, 10.0])
def test_zero_lora_keeps_the_base_argmax(alpha: float, omega: float) -> None:
    base = torch.randn(16, 300) * 5
    custom = customised_logits(base.clone(), base, alpha=alpha, omega=omega)  # zero LoRA: Q = base
    assert torch.equal(custom.argmax(-1), base.argmax(-1))


def test_combination_runs_in_float32_for_bf16_inputs() -> None:
    q, base = torch.randn(2, 10).bfloat16(), torch.randn(2, 10).bfloat16()
    custom = customised_logits(q, base, alpha=1.5, omega=0.3)
    assert custom.dtype == torch.float32
    torch.testing.assert_close(custom, customised_logits(q.float(), base.float(), alpha=1.5, omega=0.3))
    assert value(custom, 1.5).dtype == torch.float32


def test_per_row_alpha_and_omega_equal_separate_calls() -> None:
    q, base = torch.randn(3, 20), torch.randn(3, 20)
    alphas, omegas = torch.tensor([0.5, 1.0, 2.0]), torch.tensor([0.0, 0.01, 1.0])
    together = customised_logits(q, base, alphas, omegas)
    for row in range(3):
        alone = customised_logits(q[row : row + 1], base[row : row + 1], float(alphas[row]), float(omegas[row]))
        torch.testing.assert_close(together[row : row + 1], alone)
        torch.testing.assert_close(value(together, alphas)[row], value(alone, float(alphas[row]))[0])


def _two_step_example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One sequence, three positions, vocab 3: actions at positions 0 and 1, position 2 is padding."""
    q = torch.tensor([[[1.0, 2.0, 0.0], [0.5, -0.5, 1.5], [3.0, 0.0, 0.0]]])
    base = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 1.0, 0.0], [0.0, 0.0, 5.0]]])
    actions = torch.tensor([[1, 2, 0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    return q, base, actions, mask


def _v(q_row: list[float], base_row: list[float], alpha: float, omega: float) -> float:
    return alpha * _logsumexp(_expected_custom(q_row, base_row, alpha, omega))


@pytest.mark.parametrize(("alpha", "omega", "gamma"), [(1.0, 0.01, 1.0), (2.0, 0.5, 0.9)])
def test_token_rewards_read_v_at_the_next_state(alpha: float, omega: float, gamma: float) -> None:
    q, base, actions, mask = _two_step_example()
    got = token_rewards(q, base, actions, mask, alpha=alpha, omega=omega, gamma=gamma, value_position="next")
    v1 = _v(q[0, 1].tolist(), base[0, 1].tolist(), alpha, omega)
    # r0 = Q(s0, a0) - γ V(s1); the state after the last action is terminal: r1 = Q(s1, a1) - 0.
    assert got[0].tolist() == pytest.approx([2.0 - gamma * v1, 1.5, 0.0], abs=1e-5)


def test_public_code_variant_reads_v_at_the_same_state() -> None:
    q, base, actions, mask = _two_step_example()
    got = token_rewards(q, base, actions, mask, alpha=1.0, omega=0.01, gamma=1.0, value_position="same")
    v0 = _v(q[0, 0].tolist(), base[0, 0].tolist(), 1.0, 0.01)
    v1 = _v(q[0, 1].tolist(), base[0, 1].tolist(), 1.0, 0.01)
    assert got[0].tolist() == pytest.approx([2.0 - v0, 1.5 - v1, 0.0], abs=1e-5)


def test_sequence_rewards_normalise_by_length_or_padded_length() -> None:
    rewards = torch.tensor([[1.0, 2.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    assert sequence_rewards(rewards, mask, "length").tolist() == pytest.approx([1.5, 1.0])
    assert sequence_rewards(rewards, mask, "padded").tolist() == pytest.approx([0.75, 1.0])


def test_preference_loss_matches_the_formula_and_prefers_the_chosen() -> None:
    chosen = torch.tensor([[1.0, 3.0]], requires_grad=True)
    rejected = torch.tensor([[0.5, 0.0]])
    mask = torch.ones(1, 2)
    out = preference_loss(chosen, mask, rejected, mask, beta=0.1)
    margin = 2.0 - 0.25
    chi2 = (1 + 9 + 0.25 + 0) / 4
    assert out.loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-margin))) + 0.1 * chi2)
    assert out.accuracy.item() == 1.0
    assert out.margin.item() == pytest.approx(margin)
    # Raising a chosen token's reward lowers the Bradley–Terry part of the loss.
    bradley_terry = preference_loss(chosen, mask, rejected, mask, beta=0.0)
    bradley_terry.loss.backward()
    assert chosen.grad is not None and bool((chosen.grad < 0).all())


def test_chi2_term_ignores_masked_positions() -> None:
    chosen, rejected = torch.tensor([[1.0, 100.0]]), torch.tensor([[1.0, 100.0]])
    mask = torch.tensor([[1.0, 0.0]])
    out = preference_loss(chosen, mask, rejected, mask, beta=1.0)
    assert out.loss.item() == pytest.approx(math.log(2) + 1.0)


def _taken_sum(logits: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t log softmax(logits)[a_t] over the masked positions, per sequence."""
    taken = torch.log_softmax(logits, -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    return (taken * mask).sum(-1)


@pytest.mark.parametrize(("alpha", "omega"), [(1.0, 0.01), (5.0, 4.0), (0.5, 2.0)])
def test_summed_reward_is_a_log_likelihood_difference_for_both_value_positions(alpha: float, omega: float) -> None:
    # The research log's telescoping argument (experiments/README.md: why the summed reward of the short
    # harmless runs ranks by likelihood): with γ 1, Σ r = α·log π_custom(y) − ω·log π_base(y) (+ V(s_0) when V is read at
    # s_{t+1}), so a pair's margin is the same for both value positions and V(s_0), shared by the
    # pair, cancels.
    torch.manual_seed(0)
    q, base = torch.randn(2, 5, 7) * 3, torch.randn(2, 5, 7) * 3
    q[1, 0], base[1, 0] = q[0, 0], base[0, 0]  # one prompt: the first response state is shared
    actions = torch.randint(0, 7, (2, 5))
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0, 0.0]])
    custom = customised_logits(q, base, alpha, omega)
    likelihood = alpha * _taken_sum(custom, actions, mask) - omega * _taken_sum(base, actions, mask)
    v_first = value(custom, alpha)[:, 0]
    for position, expected in (("same", likelihood), ("next", likelihood + v_first)):
        rewards = token_rewards(q, base, actions, mask, alpha, omega, gamma=1.0, value_position=position)
        summed = sequence_rewards(rewards, mask, "padded") * mask.shape[-1]
        torch.testing.assert_close(summed, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("omega", [0.0, 0.01, 4.0])
def test_alpha_one_plus_omega_makes_a_zero_lora_serve_the_base_exactly(omega: float) -> None:
    base = torch.randn(4, 50) * 4
    custom = customised_logits(base.clone(), base, alpha=1.0 + omega, omega=omega)
    torch.testing.assert_close(torch.log_softmax(custom, -1), torch.log_softmax(base, -1), rtol=1e-5, atol=1e-5)


def test_omega_zero_is_exact_where_the_base_rules_a_token_out() -> None:
    q = torch.tensor([[1.0, 2.0, 3.0]])
    base = torch.tensor([[0.0, float("-inf"), 1.0]])  # the base gives token 1 no probability at all
    scores = customised_logits(q, base, alpha=torch.tensor([2.0]), omega=torch.tensor([0.0]))
    assert torch.equal(scores, q / 2)  # not NaN at token 1: ω = 0 means the base has no say
    assert customised_logits(q, base, alpha=2.0, omega=0.0).isfinite().all()
