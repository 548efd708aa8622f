"""From a step's logits to one token per sequence: Q-Adapter combination, then per-request sampling."""

from __future__ import annotations

import torch

from qadapter.core.policy import stream_scores
from qadapter.core.sampling import new_generator, pick_token
from qadapter.server.engine.request import Sequence


def policy_scores(logits: torch.Tensor, rows: list[tuple[Sequence, str | None]]) -> torch.Tensor:
    """Per-sequence float32 scores `[seqs, vocab]`, sequences in the order of their first row.

    A Q-adapter sequence owns its adapter row and the base row after it; a base sequence one row.
    """
    firsts = _first_rows(rows)
    return stream_scores(logits, firsts, [rows[i][0].knobs for i in firsts])


def sequences_of(rows: list[tuple[Sequence, str | None]]) -> list[Sequence]:
    """The sequences of `rows` in the order `policy_scores` scores them."""
    return [rows[i][0] for i in _first_rows(rows)]


def _first_rows(rows: list[tuple[Sequence, str | None]]) -> list[int]:
    """Each sequence's first row: its adapter row, or its only row for a base sequence."""
    return [i for i, (seq, name) in enumerate(rows) if name is not None or seq.adapter is None]


class Sampler:
    """Greedy or seeded sampling per sequence; each sampling sequence owns its random generator."""

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._generators: dict[int, torch.Generator] = {}  # id(sequence) → generator

    def pick(self, seqs: list[Sequence], scores: torch.Tensor) -> list[int]:
        """One token per sequence from its scores `[seqs, vocab]`."""
        tokens = scores.argmax(dim=-1).tolist()
        for i, seq in enumerate(seqs):
            params = seq.request.params
            if not params.is_greedy:
                generator = self._generators.get(id(seq))
                if generator is None:
                    generator = self._generators[id(seq)] = new_generator(params.seed, self._device)
                tokens[i] = pick_token(scores[i], params.temperature, generator, params.top_p, params.top_k)
        return tokens

    def release(self, seq: Sequence) -> None:
        self._generators.pop(id(seq), None)
