"""The one offline decode loop (`qadapter generate`, evaluation, data making); the engine is tested
against it.

Every (prompt, stream) pair decodes in one batched forward per token: a Q-adapter stream owns two
rows (adapter on, adapter off) that see the same tokens with separate KV, a base stream one row.
Prompts are left-padded, with an attention mask and per-row positions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from tqdm.auto import tqdm
from transformers.cache_utils import Cache

from qadapter.core.knobs import Knobs
from qadapter.core.policy import stream_scores
from qadapter.core.sampling import new_generator, pick_token
from qadapter.core.shared_rows import LayerRows
from qadapter.core.temperature import is_greedy


class RowModel(Protocol):
    """A model whose forward runs each batch row with its own adapter (None: the base alone)."""

    @property
    def device(self) -> torch.device: ...

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: Cache | None,
        row_adapters: Sequence[str | None],
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        plan: list[LayerRows] | None = None,
    ) -> tuple[torch.Tensor, Cache]:
        """Next-token logits `[rows, vocab]` and the updated cache; `plan`: the rows each layer runs."""
        ...

    def row_plan(self, row_adapters: Sequence[str | None], partners: Sequence[int | None]) -> list[LayerRows] | None:
        """Which rows each layer runs when an adapter row shares the layers below its adapter's with
        row partners[i], its base row (None: every row, every layer)."""
        ...


@dataclass(frozen=True)
class Stream:
    """One output per prompt: the base model (adapter None) or a Q-adapter served with its knobs."""

    adapter: str | None = None
    knobs: Knobs = field(default_factory=Knobs)

    @property
    def label(self) -> str:
        return "base" if self.adapter is None else self.adapter

    @property
    def row_adapters(self) -> tuple[str | None, ...]:
        """Its batch rows: the adapter row then the base row, or one base row."""
        return (self.adapter, None) if self.adapter else (None,)


@dataclass(frozen=True)
class DecodeParams:
    """How to pick tokens: temperature 0 is greedy; a seed makes sampling repeatable."""

    max_tokens: int = 64
    temperature: float = 0.0
    seed: int | None = None


def decode(
    model: RowModel,
    prompts: Sequence[Sequence[int]],
    streams: Sequence[Stream],
    params: DecodeParams,
    stop_ids: frozenset[int],
    pad_id: int = 0,
    batch_size: int = 16,
    progress: str | None = None,
) -> list[list[list[int]]]:
    """Each prompt's answer ids per stream (`[prompt][stream]`), a stop token included when one came.

    Prompts go `batch_size` at a time; `progress` names a progress bar over the batches.
    """
    answers: list[list[list[int]]] = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc=progress, unit="batch", disable=progress is None):
        batch = prompts[start : start + batch_size]
        outputs: list[list[list[int]]] = [[[] for _ in streams] for _ in batch]
        for step in decode_steps(model, batch, streams, params, stop_ids, pad_id, first_prompt=start):
            for per_prompt, tokens in zip(outputs, step):
                for output, token in zip(per_prompt, tokens):
                    if token is not None:
                        output.append(token)
        answers += outputs
    return answers


def decode_steps(
    model: RowModel,
    prompts: Sequence[Sequence[int]],
    streams: Sequence[Stream],
    params: DecodeParams,
    stop_ids: frozenset[int],
    pad_id: int = 0,
    first_prompt: int = 0,
) -> Iterator[list[list[int | None]]]:
    """Yield, per step, each prompt's new token per stream (None once that output has stopped).

    Sampling is seeded per prompt (seed + its index, counted from `first_prompt`), so a prompt's
    answer does not depend on the batch it is decoded in.
    """
    outputs = [(p, s) for p in range(len(prompts)) for s in range(len(streams))]
    row_adapters = [name for _ in prompts for stream in streams for name in stream.row_adapters]
    row_output = [i for i, (_, s) in enumerate(outputs) for _ in streams[s].row_adapters]  # row → its output
    first_rows = [row_output.index(i) for i in range(len(outputs))]
    knobs = [streams[s].knobs if streams[s].adapter else None for _, s in outputs]
    base_rows = [row + 1 if k is not None else row for row, k in zip(first_rows, knobs)]
    partners: list[int | None] = [None] * len(row_adapters)
    for row, base_row in zip(first_rows, base_rows):
        partners[row] = base_row if base_row != row else None
    plan = model.row_plan(row_adapters, partners)  # the rows stay the same to the end
    device = model.device
    seeds = [None if params.seed is None else params.seed + first_prompt + p for p, _ in outputs]
    generators = [new_generator(seed, device) for seed in seeds]
    input_ids, mask = _left_padded([prompts[outputs[i][0]] for i in row_output], pad_id, device)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    cache = None
    finished = [False] * len(outputs)
    for _ in range(params.max_tokens):
        logits, cache = model.forward(input_ids, cache, row_adapters, mask, positions, plan=plan)
        tokens = _pick(stream_scores(logits, first_rows, base_rows, knobs), params.temperature, generators)
        step: list[list[int | None]] = [[None] * len(streams) for _ in prompts]
        for i, ((p, s), token) in enumerate(zip(outputs, tokens)):
            step[p][s] = None if finished[i] else token
            finished[i] = finished[i] or token in stop_ids
        yield step
        if all(finished):
            return
        input_ids = torch.tensor([[tokens[i]] for i in row_output], device=device)  # [rows, 1]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        positions = positions[:, -1:] + 1


def _left_padded(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids `[rows, longest]` padded on the left, and the mask of real tokens."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + list(r) for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


def _pick(scores: torch.Tensor, temperature: float, generators: list[torch.Generator]) -> list[int]:
    if is_greedy(temperature):
        return scores.argmax(dim=-1).tolist()
    return [pick_token(row, temperature, generator) for row, generator in zip(scores, generators)]
