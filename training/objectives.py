"""What each training method optimises, and the implicit reward each one ranks responses by.

- `qadapter`: the residual-Q Bradley–Terry loss with the χ² term (docs/design.md §1, `core/policy.py`);
- `dpo`: LoRA DPO, the disabled-adapter model as reference;
- `sft`: LoRA fine-tuning on the chosen responses.
SFT and DPO adapters are served as plain LoRA policies (softmax of the adapter's own logits: α 1, ω 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from peft import PeftModel
from transformers import PreTrainedModel

from qadapter.core.knobs import PLAIN, Knobs
from qadapter.core.policy import (
    DEFAULT_BETA,
    DEFAULT_GAMMA,
    RewardNorm,
    ValuePosition,
    customised_logits,
    token_rewards,
)
from qadapter.training.data import EncodedPair
from qadapter.training.scoring import (
    ResponseBatch,
    base_window_logits,
    taken_logprobs,
    window_logits,
)

Method = Literal["qadapter", "sft", "dpo"]
METHODS: tuple[Method, ...] = ("qadapter", "sft", "dpo")
Model = PreTrainedModel | PeftModel


@dataclass(frozen=True)
class Objective:
    """A method and its hyper-parameters (β is the χ² weight for qadapter, the DPO temperature for dpo)."""

    method: Method = "qadapter"
    knobs: Knobs = field(default_factory=Knobs)  # the α, ω the reward is trained with
    gamma: float = DEFAULT_GAMMA
    beta: float = DEFAULT_BETA
    # V(s_t): r = α·log π_custom − ω·log π_base, all the served policy sees. "next" keeps a V(s₀) that
    # length normalisation does not cancel: a knob the policy cannot see (tests/unit/core/test_policy.py).
    value_position: ValuePosition = "same"
    reward_norm: RewardNorm = "length"

    @property
    def served_knobs(self) -> Knobs:
        """How the trained adapter serves by default: a Q-adapter with its training knobs; SFT and DPO
        adapters as plain LoRA policies."""
        return self.knobs if self.method == "qadapter" else PLAIN


@dataclass(frozen=True)
class StepFigures:
    """The loss of one micro-batch and, for preference methods, its pairs' ranking."""

    loss: torch.Tensor
    num_pairs: int
    num_correct: int | None  # pairs whose implicit reward ranks chosen above rejected (None for sft)


def pair_rows(pairs: Sequence[EncodedPair]) -> list[tuple[list[int], list[int]]]:
    """Interleaved (prompt, chosen), (prompt, rejected) rows: even rows chosen, odd rows rejected."""
    return [row for p in pairs for row in ((p.prompt_ids, p.chosen_ids), (p.prompt_ids, p.rejected_ids))]


def margins(row_rewards: torch.Tensor) -> torch.Tensor:
    """R(chosen) − R(rejected) per pair, from interleaved rows."""
    return row_rewards[0::2] - row_rewards[1::2]


def qadapter_token_rewards(model: Model, batch: ResponseBatch, objective: Objective) -> torch.Tensor:
    """r(s_t, a_t) over the response window, `[rows, window]`; autograd through Q only."""
    return token_rewards_of(window_logits(model, batch), base_window_logits(model, batch), batch, objective)


def token_rewards_of(
    q_logits: torch.Tensor, base_logits: torch.Tensor, batch: ResponseBatch, objective: Objective
) -> torch.Tensor:
    """`qadapter_token_rewards` from the window's logits with and without the adapter."""
    return token_rewards(
        q_logits,
        base_logits,
        batch.actions,
        batch.action_mask,
        objective.knobs.alpha,
        objective.knobs.omega,
        objective.gamma,
        objective.value_position,
    )


def log_ratios(model: Model, batch: ResponseBatch, knobs: Knobs) -> torch.Tensor:
    """Σ_t log π_custom(a_t) − log π_base(a_t) per row, π_custom the policy served with `knobs`."""
    return log_ratios_of(window_logits(model, batch), base_window_logits(model, batch), batch, knobs)


def log_ratios_of(
    q_logits: torch.Tensor, base_logits: torch.Tensor, batch: ResponseBatch, knobs: Knobs
) -> torch.Tensor:
    """`log_ratios` from the window's logits with and without the adapter."""
    custom = customised_logits(q_logits, base_logits, knobs.alpha, knobs.omega)
    ratio = taken_logprobs(custom, batch.actions) - taken_logprobs(base_logits, batch.actions)
    return (ratio * batch.action_mask).sum(dim=-1)
