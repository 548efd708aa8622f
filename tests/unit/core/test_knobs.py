"""The strength knob: a point on the line through the base (0) and the adapter as trained (1), mapped
to α/ω; and which knob choices a request may make."""

from __future__ import annotations

import pytest
import torch

from qadapter.core.errors import InvalidRequest
from qadapter.core.knobs import PLAIN, Knobs, check_knob_choice
from qadapter.core.policy import customised_logits

HARMLESS = Knobs(20.0, 19.0)  # α = 1 + ω, as the shipped Q-adapters


def served_logprobs(q: torch.Tensor, base: torch.Tensor, knobs: Knobs) -> torch.Tensor:
    return torch.log_softmax(customised_logits(q, base, knobs.alpha, knobs.omega), dim=-1)


@pytest.mark.parametrize("knobs", [HARMLESS, PLAIN, Knobs(0.8, 0.05)])
def test_a_strength_is_the_geometric_mix_of_base_and_adapter(knobs: Knobs) -> None:
    """log π_s = (1 − s)·log π_base + s·log π_1, renormalised, up to the adapter's strongest."""
    torch.manual_seed(0)
    q, base = torch.randn(4, 50) * 3, torch.randn(4, 50) * 3
    for strength in (0.01, 0.3, 1.0, knobs.strength_range[1]):
        mixed = (1 - strength) * torch.log_softmax(base, -1) + strength * served_logprobs(q, base, knobs)
        at_strength = knobs.at_strength(strength)
        assert at_strength is not None
        assert served_logprobs(q, base, at_strength) == pytest.approx(torch.log_softmax(mixed, -1), abs=1e-4)


def test_strength_one_is_the_adapter_and_zero_the_base() -> None:
    assert HARMLESS.at_strength(1.0) == HARMLESS
    assert HARMLESS.at_strength(0.0) is None
    assert HARMLESS.at_strength(2.0) == Knobs(10.0, 9.0)


@pytest.mark.parametrize("strength", [0.05, 1.0, 5.0])
def test_an_untrained_adapter_is_the_base_at_every_strength(strength: float) -> None:
    """With α = 1 + ω and Q = the base's logits (a zero LoRA), α_s = 1 + ω_s still."""
    base = torch.randn(3, 40) * 4
    knobs = HARMLESS.at_strength(strength)
    assert knobs is not None and knobs.alpha == pytest.approx(1 + knobs.omega)
    assert served_logprobs(base, base, knobs) == pytest.approx(torch.log_softmax(base, -1), abs=1e-4)


@pytest.mark.parametrize(
    ("knobs", "strength"), [(PLAIN, 1.5), (HARMLESS, 10.5), (HARMLESS, 0.001), (Knobs(0.8, 0.05), 1.1)]
)
def test_a_strength_out_of_the_adapters_range_is_refused_with_the_range(knobs: Knobs, strength: float) -> None:
    low, high = knobs.strength_range
    with pytest.raises(InvalidRequest, match=rf"strength must be 0 .* in \[{low:.3g}, {high:.3g}\]") as caught:
        knobs.at_strength(strength)
    assert caught.value.param == "strength"


@pytest.mark.parametrize(
    ("choice", "param"),
    [({"alpha": 2.0}, "omega"), ({"omega": 1.0}, "alpha"), ({"alpha": 2.0, "omega": 1.0, "strength": 1.0}, "strength")],
)
def test_half_a_pair_or_a_pair_with_a_strength_is_refused(choice: dict, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_knob_choice(**choice)
    assert caught.value.param == param


def test_served_takes_a_pair_a_strength_or_the_adapters_own() -> None:
    assert HARMLESS.served() == HARMLESS
    assert HARMLESS.served(alpha=3.0, omega=2.0) == Knobs(3.0, 2.0)
    assert HARMLESS.served(strength=0.5) == Knobs(40.0, 39.0)
    assert HARMLESS.served(strength=0) is None
