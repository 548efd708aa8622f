"""From a step's logits to one token per sequence: Q-Adapter combination, then per-request sampling."""

from __future__ import annotations

import torch

from adapters.policy import customised_logits
from server.engine.request import Sequence


def policy_scores(logits: torch.Tensor, rows: list[tuple[Sequence, str | None]]) -> torch.Tensor:
    """Per-sequence float32 scores `[seqs, vocab]`, sequences in the order of their first row.

    A Q-adapter sequence owns its adapter row and the base row after it; a base sequence one row,
    scored as a Q-adapter with Q = base, ω = 0, α = 1, which is exactly its own logits.
    """
    firsts = _first_rows(rows)
    seqs = [rows[i][0] for i in firsts]
    base_rows = [i + 1 if rows[i][1] is not None else i for i in firsts]
    alphas = torch.tensor([s.alpha if s.adapter else 1.0 for s in seqs], device=logits.device)
    omegas = torch.tensor([s.omega if s.adapter else 0.0 for s in seqs], device=logits.device)
    return customised_logits(logits[firsts], logits[base_rows], alphas, omegas)


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
            if not seq.request.params.is_greedy:
                tokens[i] = self._sample(seq, scores[i])
        return tokens

    def release(self, seq: Sequence) -> None:
        self._generators.pop(id(seq), None)

    def _sample(self, seq: Sequence, scores: torch.Tensor) -> int:
        params = seq.request.params
        generator = self._generators.get(id(seq))
        if generator is None:
            generator = torch.Generator(device=self._device)
            generator.manual_seed(params.seed) if params.seed is not None else generator.seed()
            self._generators[id(seq)] = generator
        scores = scores / params.temperature
        if 0 < params.top_k < scores.shape[-1]:
            kth = torch.topk(scores, params.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if params.top_p < 1.0:
            ordered, index = torch.sort(scores, descending=True)
            cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
            drop = cumulative - torch.softmax(ordered, dim=-1) >= params.top_p  # keep the first over top_p
            drop[0] = False  # the most likely token always stays (a tiny top_p rounds to 0 in float32)
            scores = scores.scatter(0, index, ordered.masked_fill(drop, float("-inf")))
        return int(torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator))
