"""From a step's logits to one token per sequence: Q-Adapter combination, the request's sampling
controls, then per-request sampling."""

from __future__ import annotations

from typing import Any

import torch

from qadapter.core.errors import QAdapterError, RequestFault
from qadapter.core.policy import stream_scores
from qadapter.core.sampling import new_generator, pick_token
from qadapter.server.engine.controls import apply_controls
from qadapter.server.engine.grammar import GrammarMasks
from qadapter.server.engine.logprobs import logprob_entries, stream_rows
from qadapter.server.engine.request import Sequence


def policy_scores(
    logits: torch.Tensor, rows: list[tuple[Sequence, str | None]], eos_ids: frozenset[int]
) -> torch.Tensor:
    """Per-sequence float32 scores `[seqs, vocab]`, sequences in the order of their first row, with
    their sampling controls applied.

    A Q-adapter sequence has an adapter row and a base row, anywhere in `rows`; a base sequence one row.
    """
    q_rows, base_rows = stream_rows(rows)
    seqs = [rows[i][0] for i in q_rows]
    return apply_controls(stream_scores(logits, q_rows, base_rows, [seq.knobs for seq in seqs]), seqs, eos_ids)


def sequences_of(rows: list[tuple[Sequence, str | None]]) -> list[Sequence]:
    """The sequences of `rows` in the order `policy_scores` scores them."""
    return [rows[i][0] for i in stream_rows(rows)[0]]


class Sampler:
    """Greedy or seeded sampling per sequence; each sampling sequence owns its random generator."""

    def __init__(self, device: torch.device, tokenizer: Any, vocab_size: int) -> None:
        self._device = device
        self._grammars = GrammarMasks(tokenizer, vocab_size)
        self._generators: dict[int, torch.Generator] = {}  # id(sequence) → generator

    def pick(self, seqs: list[Sequence], scores: torch.Tensor) -> list[int | QAdapterError]:
        """One token per sequence from its scores `[seqs, vocab]`, or the error that stops that sequence
        alone: scores with a NaN or +inf, or no finite score at all (one reduction for the whole step).
        A sequence with a grammar has its scores masked to what the grammar allows next; when the
        grammar is complete and min_tokens forbids its end, the grammar wins."""
        faults = {i: self._mask(seq, scores[i]) for i, seq in enumerate(seqs) if seq.request.params.grammar}
        tokens: list[int | QAdapterError] = scores.argmax(dim=-1).tolist()
        best = scores.amax(dim=-1)  # NaN if any score is
        usable, blocked = torch.isfinite(best).tolist(), torch.isneginf(best).tolist()
        for i, seq in enumerate(seqs):
            params = seq.request.params
            if blocked[i] and seq.grammar_state is not None and seq.grammar_state.is_accepting():
                tokens[i] = self._grammars.eos_token
            elif not usable[i]:
                tokens[i] = RequestFault("The model produced no finite scores for this request; it was stopped.")
            elif not params.is_greedy:
                tokens[i] = self._sample(seq, scores[i])
            if faults.get(i) is not None:
                tokens[i] = faults[i]  # type: ignore[assignment]
            token = tokens[i]
            if params.logprobs is not None and isinstance(token, int):
                seq.logprobs += logprob_entries(
                    scores[i : i + 1], torch.tensor([token], device=scores.device), params.logprobs
                )
            if seq.grammar_state is not None and isinstance(token, int):
                tokens[i] = self._grammars.advance(seq.grammar_state, token) or token
        return tokens

    def _mask(self, seq: Sequence, row: torch.Tensor) -> QAdapterError | None:
        try:
            if seq.grammar_state is None:
                seq.grammar_state = self._grammars.matcher(seq.request.params.grammar)  # type: ignore[arg-type]
        except RequestFault as fault:
            return fault
        return self._grammars.mask(row, seq.grammar_state)

    def _sample(self, seq: Sequence, scores: torch.Tensor) -> int | RequestFault:
        params = seq.request.params
        generator = self._generators.get(id(seq))
        if generator is None:
            generator = self._generators[id(seq)] = new_generator(params.seed, self._device)
        try:
            return pick_token(scores, params.temperature, generator, params.top_p, params.top_k)
        except RuntimeError as exc:  # e.g. probabilities that underflow to all zeros
            return RequestFault(f"Sampling failed for this request ({exc}); it was stopped.")

    def release(self, seq: Sequence) -> None:
        self._generators.pop(id(seq), None)
