"""Incremental detokenization with stop strings that may span tokens (no torch)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT_CHAR = "\ufffd"  # what a tokenizer decodes half a multi-byte character to


class TextTracker:
    """Turns a growing list of token ids into text deltas, ending at the first stop string."""

    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str]) -> None:
        self._decode = decode
        self._stop = tuple(stop)
        self._num_emitted = 0  # characters of text already handed out

    def update(self, token_ids: Sequence[int]) -> tuple[str, bool]:
        """The new text since the last call, and whether a stop string ended the output."""
        text = self._decode(token_ids)
        hits = [i for i in (text.find(s) for s in self._stop) if i >= 0]
        if hits:
            return self._emit(text[: min(hits)]), True
        if text.endswith(REPLACEMENT_CHAR):
            return "", False
        return self._emit(text[: len(text) - self._held_back(text)]), False

    def flush(self, token_ids: Sequence[int]) -> str:
        """Everything not yet handed out (at the end, a held-back stop prefix is real text)."""
        return self._emit(self._decode(token_ids))

    def _held_back(self, text: str) -> int:
        """Length of the longest end of `text` that could still grow into a stop string."""
        return max(
            (n for s in self._stop for n in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:n])),
            default=0,
        )

    def _emit(self, text: str) -> str:
        delta = text[self._num_emitted :]
        self._num_emitted = max(self._num_emitted, len(text))
        return delta
