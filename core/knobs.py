"""The Q-adapter knobs α and ω: one validated type for manifests, requests, decoding, training and
evaluation (no torch here: the request objects use it too)."""

from __future__ import annotations

from dataclasses import dataclass

from qadapter.core.errors import InvalidRequest

DEFAULT_ALPHA = 1.0
DEFAULT_OMEGA = 0.01
# α divides the logits: a tiny α overflows them to inf; a huge one flattens the policy to uniform.
MIN_ALPHA = 1e-3
MAX_ALPHA = 100.0
MAX_OMEGA = 100.0


@dataclass(frozen=True)
class Knobs:
    """How a Q-adapter serves: logits_custom = (Q + ω·log_softmax(base_logits)) / α (docs/design.md §1)."""

    alpha: float = DEFAULT_ALPHA
    omega: float = DEFAULT_OMEGA

    def __post_init__(self) -> None:
        if not MIN_ALPHA <= self.alpha <= MAX_ALPHA:  # also refuses nan
            raise InvalidRequest(f"alpha must be in [{MIN_ALPHA:g}, {MAX_ALPHA:g}], got {self.alpha:g}", param="alpha")
        if not 0.0 <= self.omega <= MAX_OMEGA:
            raise InvalidRequest(f"omega must be in [0, {MAX_OMEGA:g}], got {self.omega:g}", param="omega")

    def with_overrides(self, alpha: float | None = None, omega: float | None = None) -> Knobs:
        """These knobs with a request's or a command's overrides (None keeps the value)."""
        return Knobs(self.alpha if alpha is None else alpha, self.omega if omega is None else omega)


# softmax(Q) alone: how SFT and DPO adapters (plain LoRA policies) are served.
PLAIN = Knobs(alpha=1.0, omega=0.0)
