"""Q-adapters: on-disk format, policy math, store, training and evaluation (no server code)."""
