"""The forwards of one engine step over a single KV cache shared by every running row.

KV layout: one left-padded cache for the whole batch, with a 2-D attention mask and per-row
positions. A joining request is prefilled in its own forward and its cache is padded into the
running one; a leaving request's rows are dropped and all-padding columns trimmed. It works with
any Hugging Face causal LM's own attention; a paged cache would need attention kernels of our own.

Measured (64 rows, ~130 cached tokens, 2 CPU cores): with transformers' DynamicCache, 55% of a
decode step was `torch.cat` re-copying the whole cache to append one token. `GrowableCache` keeps
spare room and writes the new token in place, so appending costs the new token only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from qadapter.core.lora import AdapterHost
from qadapter.server.engine.request import Sequence


class BatchRunner:
    """Owns the batched KV cache; rows are kept in the order of `self.rows`."""

    def __init__(self, host: AdapterHost, pad_token_id: int) -> None:
        self._host = host
        self._pad_token_id = pad_token_id
        self._cache: Cache | None = None
        self._mask: torch.Tensor | None = None  # [rows, kv_len] 1 = real token, 0 = left padding
        self.rows: list[tuple[Sequence, str | None]] = []  # (sequence, adapter key, or None for a base row)

    @property
    def num_rows(self) -> int:
        return len(self.rows)

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

    def prefill(self, seqs: list[Sequence]) -> torch.Tensor:
        """Run the prompts of joining sequences and add their rows; logits `[new rows, vocab]`."""
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
        logits, cache = self._host.forward(ids, GrowableCache(), [name for _, name in rows], mask, positions)
        self._join(cache, mask)
        self.rows += rows
        return logits

    def reset(self) -> None:
        """Drop every row (after a failed step, whose state is unknown)."""
        self.rows, self._cache, self._mask = [], None, None

    def remove(self, seqs: list[Sequence]) -> None:
        """Drop the rows of finished or aborted sequences and free their KV memory."""
        leaving = set(map(id, seqs))
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


class GrowableLayer(DynamicLayer):
    """One layer's keys and values `[rows, heads, len, dim]`, views into buffers with spare room."""

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.device = key_states.device
            self.is_initialized = True
            self.replace(key_states, value_states)
            return self.keys, self.values
        length, added = self.keys.shape[-2], key_states.shape[-2]
        if length + added > self._key_buffer.shape[-2]:
            self.replace(self.keys, self.values, min_room=added)
        self._key_buffer[:, :, length : length + added] = key_states
        self._value_buffer[:, :, length : length + added] = value_states
        self.keys = self._key_buffer[:, :, : length + added]
        self.values = self._value_buffer[:, :, : length + added]
        return self.keys, self.values

    def replace(self, keys: torch.Tensor, values: torch.Tensor, min_room: int = 0) -> None:
        """Hold a copy of `keys`/`values` with room for at least `min_room` more (and half again)."""
        length = keys.shape[-2]
        capacity = length + max(min_room, 64, length // 2)
        self._key_buffer = keys.new_empty((*keys.shape[:2], capacity, keys.shape[-1]))
        self._value_buffer = values.new_empty((*values.shape[:2], capacity, values.shape[-1]))
        self._key_buffer[:, :, :length] = keys
        self._value_buffer[:, :, :length] = values
        self.keys = self._key_buffer[:, :, :length]
        self.values = self._value_buffer[:, :, :length]


class GrowableCache(DynamicCache):
    """A DynamicCache whose layers append in place (see GrowableLayer)."""

    def __init__(self) -> None:
        Cache.__init__(self, layer_class_to_replicate=GrowableLayer)
