"""Q-adapters as the server sees them: the on-disk format and its validation, the store, archives (no server or training code)."""
