"""Defaults and bounds of the Q-adapter knobs (no torch: the request objects use them too)."""

DEFAULT_ALPHA = 1.0
DEFAULT_OMEGA = 0.01
# α divides the logits: a tiny α overflows them to inf; a huge one flattens the policy to uniform.
MIN_ALPHA = 1e-3
MAX_ALPHA = 100.0
MAX_OMEGA = 100.0
