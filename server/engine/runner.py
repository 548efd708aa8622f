"""The forwards of one engine step over a single KV cache shared by every running row.

KV layout: one left-padded cache for the whole batch, with a 2-D attention mask and per-row
positions. Joining requests are prefilled as a group in a cache of their own, a chunk of at most
`prefill_chunk_tokens` (rows × columns) per step, so an abort or a new arrival waits for one chunk,
not for a whole long prompt; after the last chunk the group's cache is padded into the running
one. A leaving request's rows are dropped and all-padding columns trimmed. It works with any
Hugging Face causal LM's own attention; a paged cache would need attention kernels of our own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache

from qadapter.core.lora import AdapterHost
from qadapter.server.engine.kv_cache import GrowableCache, GrowableLayer
from qadapter.server.engine.request import Sequence

Row = tuple[Sequence, str | None]  # a sequence and its adapter key (None: a base row)


@dataclass
class _PrefillGroup:
    """Joining rows whose prompts are being run, `done` columns so far."""

    rows: list[Row]
    ids: torch.Tensor  # [rows, width] left-padded prompts
    mask: torch.Tensor  # [rows, width] 1 = real token
    positions: torch.Tensor  # [rows, width]
    cache: GrowableCache
    done: int = 0

    def keep(self, index: torch.Tensor, rows: list[Row]) -> None:
        self.rows = rows
        self.ids, self.mask, self.positions = self.ids[index], self.mask[index], self.positions[index]
        for layer in self.cache.layers:
            if isinstance(layer, GrowableLayer) and layer.is_initialized:
                layer.replace(layer.keys[index], layer.values[index])


class BatchRunner:
    """Owns the batched KV cache; rows are kept in the order of `self.rows`."""

    def __init__(self, host: AdapterHost, pad_token_id: int, prefill_chunk_tokens: int) -> None:
        self._host = host
        self._pad_token_id = pad_token_id
        self._prefill_chunk_tokens = prefill_chunk_tokens
        self._cache: Cache | None = None
        self._mask: torch.Tensor | None = None  # [rows, kv_len] 1 = real token, 0 = left padding
        self._prefill: _PrefillGroup | None = None
        self.rows: list[Row] = []  # decoding rows, in cache order

    @property
    def num_rows(self) -> int:
        return len(self.rows)

    @property
    def is_prefilling(self) -> bool:
        return self._prefill is not None

    def decode(self) -> torch.Tensor:
        """One token for every running row (each row's last output token); logits `[rows, vocab]`."""
        device = self._host.device
        tokens = torch.tensor([[seq.output_ids[-1]] for seq, _ in self.rows], device=device)  # [rows, 1]
        assert self._mask is not None
        self._mask = torch.cat([self._mask, torch.ones_like(self._mask[:, :1])], dim=1)
        positions = self._mask.sum(dim=1, keepdim=True) - 1  # [rows, 1]
        logits, self._cache = self._host.forward(
            tokens, self._cache, [name for _, name in self.rows], self._mask, positions
        )
        return logits

    def start_prefill(self, seqs: list[Sequence]) -> None:
        """Take joining sequences as the next prefill group (there is none under way)."""
        assert self._prefill is None, "one prefill group at a time"
        rows = [(seq, key) for seq in seqs for key in ((seq.adapter_key, None) if seq.adapter_key else (None,))]
        width = max(seq.num_prompt_tokens for seq in seqs)
        device = self._host.device
        ids = torch.full((len(rows), width), self._pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        for i, (seq, _) in enumerate(rows):
            n = seq.num_prompt_tokens
            ids[i, width - n :] = torch.tensor(seq.request.prompt_ids, device=device)
            mask[i, width - n :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        self._prefill = _PrefillGroup(rows, ids, mask, positions, GrowableCache())

    def prefill_chunk(self) -> torch.Tensor | None:
        """Run the next chunk of the prefill group; after its last chunk the group's rows join the
        decoding rows and their logits `[new rows, vocab]` are returned (None before that)."""
        group = self._prefill
        assert group is not None
        end = min(group.ids.shape[1], group.done + max(1, self._prefill_chunk_tokens // len(group.rows)))
        logits, _ = self._host.forward(
            group.ids[:, group.done : end],
            group.cache,
            [name for _, name in group.rows],
            group.mask[:, :end],
            group.positions[:, group.done : end],
        )
        group.done = end
        if end < group.ids.shape[1]:
            return None
        self._prefill = None
        self._join(group.cache, group.mask)
        self.rows += group.rows
        return logits

    def reset(self) -> None:
        """Drop every row (after a failed step, whose state is unknown)."""
        self.rows, self._cache, self._mask, self._prefill = [], None, None, None

    def remove(self, seqs: list[Sequence]) -> None:
        """Drop the rows of finished or aborted sequences and free their KV memory."""
        leaving = set(map(id, seqs))
        if self._prefill is not None:
            self._remove_from_prefill(leaving)
        keep = [i for i, (seq, _) in enumerate(self.rows) if id(seq) not in leaving]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self._cache, self._mask = None, None
            return
        assert self._cache is not None and self._mask is not None
        index = torch.tensor(keep, device=self._mask.device)
        first_real = int(self._mask[index].any(dim=0).nonzero()[0])  # columns before it are all padding
        self._mask = self._mask[index, first_real:]
        for layer in self._cache.layers:
            assert isinstance(layer, GrowableLayer)
            layer.replace(layer.keys[index, :, first_real:], layer.values[index, :, first_real:])

    def _remove_from_prefill(self, leaving: set[int]) -> None:
        group = self._prefill
        assert group is not None
        keep = [i for i, (seq, _) in enumerate(group.rows) if id(seq) not in leaving]
        if not keep:
            self._prefill = None
        elif len(keep) < len(group.rows):
            group.keep(torch.tensor(keep, device=group.ids.device), [group.rows[i] for i in keep])

    def _join(self, cache: Cache, mask: torch.Tensor) -> None:
        if self._cache is None or self._mask is None:
            self._cache, self._mask = cache, mask
            return
        width = max(self._mask.shape[1], mask.shape[1])
        self._mask = torch.cat([_left_pad(self._mask, width, dim=1), _left_pad(mask, width, dim=1)])
        for running, joining in zip(self._cache.layers, cache.layers):  # keys: [rows, heads, kv_len, dim]
            assert isinstance(running, GrowableLayer)
            running.replace(
                torch.cat([_left_pad(running.keys, width, 2), _left_pad(joining.keys, width, 2)]),
                torch.cat([_left_pad(running.values, width, 2), _left_pad(joining.values, width, 2)]),
            )


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    pad = [0, 0] * (t.dim() - dim - 1) + [missing, 0]  # F.pad lists dims from the last
    return F.pad(t, pad)
