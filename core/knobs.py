"""The Q-adapter knobs α and ω: one validated type for manifests, requests, decoding, training and
evaluation (no torch here: the request objects use it too)."""

from __future__ import annotations

from dataclasses import dataclass

from qadapter.core.errors import InvalidRequest

DEFAULT_ALPHA = 1.0
DEFAULT_OMEGA = 0.01
# α divides the logits: a tiny α overflows them to inf. A large α with a large ω (α = 1 + ω) is
# close to the base: a weak strength maps to one (α_s = α/s), so both go up to 10^4.
MIN_ALPHA = 1e-3
MAX_ALPHA = 1e4
MAX_OMEGA = 1e4
# strength: 0 is the base, 1 the adapter as trained; the ends keep α_s and ω_s within their bounds.
MIN_STRENGTH = 0.01
MAX_STRENGTH = 10.0


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

    def served(
        self, alpha: float | None = None, omega: float | None = None, strength: float | None = None
    ) -> Knobs | None:
        """The knobs a request or a command serves this adapter with: its own, a whole (alpha, omega)
        pair, or a strength; None at strength 0, which is the base model itself. The caller's door
        checked the choice (check_knob_choice)."""
        if alpha is not None and omega is not None:
            return Knobs(alpha, omega)
        return self if strength is None else self.at_strength(strength)

    def at_strength(self, strength: float) -> Knobs | None:
        """The policy at `strength` s on the line through the base (s = 0) and this one (s = 1):
        log π_s = (1 − s)·log π_base + s·log π_1 + const, that is α_s = α/s, ω_s = ω + α(1 − s)/s
        (α_s − ω_s = α − ω: with α = 1 + ω an untrained adapter is the base at every strength).
        Beyond 1 it moves further from the base, while the base's weight ω_s stays ≥ 0."""
        if strength == 0:
            return None
        low, high = self.strength_range
        if not low <= strength <= high:
            raise InvalidRequest(
                f"strength must be 0 (the base model) or in [{low:.3g}, {high:.3g}] for this adapter "
                f"(1 serves it as trained; above {high:.3g} the base model's weight would turn negative)",
                param="strength",
            )
        alpha, omega = self.alpha / strength, self.omega + self.alpha * (1 - strength) / strength
        return Knobs(min(alpha, MAX_ALPHA), min(max(omega, 0.0), MAX_OMEGA))  # min/max: rounding at the ends

    @property
    def strength_range(self) -> tuple[float, float]:
        """The strengths above 0 this adapter can be served at: α_s and ω_s within their bounds (the
        weakest), the base's weight ω_s ≥ 0, that is s ≤ α / (α − ω) (the strongest)."""
        low = max(MIN_STRENGTH, self.alpha / MAX_ALPHA, self.alpha / (MAX_OMEGA - self.omega + self.alpha))
        high = MAX_STRENGTH if self.alpha <= self.omega else min(MAX_STRENGTH, self.alpha / (self.alpha - self.omega))
        return low, max(low, high)


def check_knob_choice(alpha: float | None = None, omega: float | None = None, strength: float | None = None) -> None:
    """A request sets both alpha and omega, or a strength, or neither: half a pair serves a policy
    the adapter was not tuned for, and a strength is a point on the adapter's own line."""
    if (alpha is None) != (omega is None):
        missing = "omega" if omega is None else "alpha"
        raise InvalidRequest(
            f"set alpha and omega together, or strength alone, or none of them for the adapter's own: "
            f"{missing} is missing",
            param=missing,
        )
    if strength is not None and alpha is not None:
        raise InvalidRequest("set strength or alpha and omega, not both", param="strength")


# softmax(Q) alone: how SFT and DPO adapters (plain LoRA policies) are served.
PLAIN = Knobs(alpha=1.0, omega=0.0)
