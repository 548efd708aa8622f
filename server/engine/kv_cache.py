"""The engine's KV caches: `GrowableCache` for a group of prompts being prefilled (left-padded,
appending in place) and `SlotCache` for the decoding rows (one slot per row).

Measured (64 rows, ~130 cached tokens, 2 CPU cores): with transformers' DynamicCache, 55% of a
decode step was `torch.cat` re-copying the whole cache to append one token. `GrowableCache` keeps
spare room and writes the new token in place, so appending costs the new token only.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer


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


class SlotCache(Cache):
    """The decoding rows' keys and values, one slot per row: `[slots, heads, length, dim]` per layer,
    the rows compacted at the front and each row's tokens from position 0.

    A join writes only its own rows (`add_rows`), a leave moves only the last row into the slot it
    frees (`remove_rows`), and a decode step writes one token per row at that row's own length; the
    buffers grow geometrically, so no join, leave or step copies the whole cache. Attention still
    spans the longest row (the mask hides the rest): skipping it would need kernels of our own.
    """

    def __init__(self) -> None:
        Cache.__init__(self, layers=[])
        self._keys: list[torch.Tensor] = []  # per layer: [slot capacity, heads, length capacity, dim]
        self._values: list[torch.Tensor] = []
        self.lengths: list[int] = []  # tokens cached per row, in slot order
        self._write_at: torch.Tensor | None = None  # [rows]: where this step's token goes

    @property
    def is_compileable(self) -> bool:  # type: ignore[override]
        return False

    @property
    def num_rows(self) -> int:
        return len(self.lengths)

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        return max(self.lengths, default=0)

    def step_inputs(self, dtype: torch.dtype, additive: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's attention mask `[rows, 1, 1, width]` (each row sees its own tokens and the new one)
        and positions `[rows, 1]`; the new token of row i goes to column lengths[i]."""
        width = max(self.lengths) + 1
        self._ensure_capacity(self.num_rows, width)
        device = self._keys[0].device
        self._write_at = torch.tensor(self.lengths, device=device)
        visible = torch.arange(width, device=device)[None, :] <= self._write_at[:, None]  # [rows, width]
        mask = visible[:, None, None, :]
        if additive:  # eager attention adds its mask: 0 where visible, the lowest float elsewhere
            mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, torch.finfo(dtype).min)
        return mask, self._write_at[:, None]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one token per row (`[rows, heads, 1, dim]`) at its row's length; the rows' views."""
        width = self._write(key_states, value_states, layer_idx, torch.arange(self.num_rows, device=key_states.device))
        return self._keys[layer_idx][: self.num_rows, :, :width], self._values[layer_idx][: self.num_rows, :, :width]

    def update_rows(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`update` for a layer that runs some rows only (the others share it: core/shared_rows.py);
        their keys and values, copied out."""
        width = self._write(key_states, value_states, layer_idx, rows)
        return self._keys[layer_idx][rows, :, :width], self._values[layer_idx][rows, :, :width]

    def _write(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, rows: torch.Tensor) -> int:
        """Write these rows' new token at each one's length; the width the step's attention spans."""
        assert self._write_at is not None, "step_inputs() comes before the forward"
        self._keys[layer_idx][rows, :, self._write_at[rows]] = key_states[:, :, 0]
        self._values[layer_idx][rows, :, self._write_at[rows]] = value_states[:, :, 0]
        return max(self.lengths) + 1

    def advance(self) -> None:
        """After a decode step: every row holds one more token."""
        self.lengths = [n + 1 for n in self.lengths]
        self._write_at = None

    @torch.inference_mode()  # the buffers are inference tensors: written in inference mode only
    def add_rows(self, prefilled: Cache, mask: torch.Tensor, layer_rows: list[tuple[int, ...]] | None = None) -> None:
        """Append the rows of a left-padded prefill cache (`mask` `[rows, width]` marks real tokens);
        with `layer_rows`, its layer i holds only those rows (the others shared it, and their slots
        stay unused there)."""
        counts = mask.sum(dim=1).tolist()
        if not self._keys:
            first = prefilled.layers[0].keys
            self._keys = [first.new_zeros((0, first.shape[1], 0, first.shape[3])) for _ in prefilled.layers]
            self._values = [t.clone() for t in self._keys]
        start = self.num_rows
        self._ensure_capacity(start + len(counts), max(counts) + 1)
        width, every_row = mask.shape[1], tuple(range(len(counts)))
        for layer, (keys, values) in enumerate(zip(self._keys, self._values)):
            source = prefilled.layers[layer]
            rows = layer_rows[layer] if layer_rows and layer < len(layer_rows) else every_row
            for held, row in enumerate(rows):  # one copy per joining row: only its real tokens
                count = counts[row]
                keys[start + row, :, :count] = source.keys[held, :, width - count :]
                values[start + row, :, :count] = source.values[held, :, width - count :]
        self.lengths += counts

    @torch.inference_mode()
    def remove_rows(self, rows: list[int]) -> list[int]:
        """Free these rows' slots, each refilled by the row then last; return the new slot order as old
        indices (so the caller can reorder what it keeps per row)."""
        order = list(range(self.num_rows))
        for row in sorted(rows, reverse=True):
            last = len(order) - 1
            count = self.lengths[last] if row != last else 0
            for buffers in (self._keys, self._values):
                for buffer in buffers:
                    buffer[row, :, :count] = buffer[last, :, :count]
                    # Nothing of a leaving row stays behind: a faulted request's NaN in a freed slot would
                    # reach the next row's attention through its masked columns (0 × NaN is NaN).
                    buffer[row, :, count:] = 0
                    if row != last:
                        buffer[last] = 0
            if row != last:
                self.lengths[row], order[row] = count, order[last]
            self.lengths.pop()
            order.pop()
        if not self.lengths:  # nothing decodes: give the memory back
            self._keys, self._values = [], []
        return order

    def _ensure_capacity(self, num_rows: int, length: int) -> None:
        """Grow the buffers (doubling) to hold `num_rows` rows of `length` tokens."""
        slots, room = self._keys[0].shape[0], self._keys[0].shape[2]
        if num_rows <= slots and length <= room:
            return
        new_slots = max(num_rows, 2 * slots, 8) if num_rows > slots else slots
        new_room = max(length, 2 * room, 64) if length > room else room
        for buffers in (self._keys, self._values):
            for i, old in enumerate(buffers):
                grown = old.new_zeros((new_slots, old.shape[1], new_room, old.shape[3]))
                grown[: old.shape[0], :, : old.shape[2]] = old
                buffers[i] = grown
