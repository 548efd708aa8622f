"""Sampling controls on the customised scores, after the Q-adapter combination and before sampling
(docs/api.md, "Sampling controls"): repetition, frequency and presence penalties, logit bias and
min_tokens, as vLLM defines them, with the policy's scores in the place of the logits. A step whose
sequences set none of them does no work here."""

from __future__ import annotations

import torch

from qadapter.server.engine.request import Sequence


def apply_controls(scores: torch.Tensor, seqs: list[Sequence], eos_ids: frozenset[int]) -> torch.Tensor:
    """`scores` `[seqs, vocab]` with each sequence's controls applied to its row (in place)."""
    for row, seq in zip(scores, seqs, strict=True):
        if seq.request.params.has_controls:
            _control_row(row, seq, eos_ids)
    return scores


def _control_row(row: torch.Tensor, seq: Sequence, eos_ids: frozenset[int]) -> None:
    params, device = seq.request.params, row.device
    if params.repetition_penalty != 1.0:  # every token seen, prompt included: shrink towards "less likely"
        seen = torch.tensor(sorted({*seq.request.prompt_ids, *seq.output_ids}), device=device)
        values = row[seen]
        row[seen] = torch.where(values > 0, values / params.repetition_penalty, values * params.repetition_penalty)
    if seq.output_ids and (params.frequency_penalty or params.presence_penalty):  # generated tokens only
        ids, counts = torch.tensor(seq.output_ids, device=device).unique(return_counts=True)
        row[ids] -= params.frequency_penalty * counts.to(row.dtype) + params.presence_penalty
    if params.logit_bias:
        ids = torch.tensor([token for token, _ in params.logit_bias], device=device)
        row[ids] += torch.tensor([bias for _, bias in params.logit_bias], device=device, dtype=row.dtype)
    if len(seq.output_ids) < params.min_tokens:  # no stop token before min_tokens
        stops = set(params.stop_token_ids) | (set() if params.ignore_eos else set(eos_ids))
        if stops:
            row[torch.tensor(sorted(stops), device=device)] = float("-inf")
