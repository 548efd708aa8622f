"""Shared lower layers: a Q-adapter row and its base row see the same tokens, and below the adapter's
lowest adapted layer k they compute the same thing. A forward with a row plan runs each decoder
layer on the rows that differ there only — every row without a partner, and each adapter row from
its layer k on, entering layer k with a copy of its partner's hidden state — so an adapter on the
top quarter of the layers costs one row, not two, in the other three quarters.

A layer's keys and values are those of the rows it ran: a cache whose layers hold what they are
given (a prefill group's, the offline decode's) needs nothing; one that keeps a slot per row in
every layer (the engine's decoding rows) offers `update_rows`, and a shared row's slot is left
unused below its k (no memory saved: the compute is).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from transformers import PreTrainedModel

# Families whose decoder layers take the hidden state as their one positional argument and every
# per-row input (mask, rotary cos and sin, positions, cache) by keyword, batch first — what the
# hook cuts. Others (Gemma3n's stacked streams, Bloom's alibi, layers sharing KV across layers) run
# unshared. Read off transformers 5.24's modeling files.
SHAREABLE_MODEL_TYPES = frozenset(
    {"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo2"}
)


@dataclass(frozen=True)
class LayerRows:
    """What one decoder layer runs: `rows` (indices into the batch), and how to build its input from
    the previous layer's output (`gather`, positions in the previous layer's rows; None: as is)."""

    rows: tuple[int, ...]
    gather: tuple[int, ...] | None


def row_plan(shared_below: Sequence[int], partners: Sequence[int | None]) -> list[LayerRows] | None:
    """Per layer (as many as `shared_below` allows: pass one entry per row) the rows it runs.

    Row i shares the layers below `shared_below[i]` with row `partners[i]` (None, or 0: no sharing);
    a partner shares nothing itself. None when no row shares a layer.
    """
    below = [k if partner is not None else 0 for k, partner in zip(shared_below, partners)]
    if not any(below):
        return None
    assert all(partners[p] is None for p in partners if p is not None), "a partner shares nothing itself"
    plan, previous = [], tuple(range(len(below)))
    for layer in range(max(below) + 1):
        rows = tuple(i for i, k in enumerate(below) if k <= layer)
        if rows == previous:
            plan.append(LayerRows(rows, None))
            continue
        position = {row: p for p, row in enumerate(previous)}
        plan.append(LayerRows(rows, tuple(position[i] if i in position else position[partners[i]] for i in rows)))  # type: ignore[index]
        previous = rows
    return plan


def decoder_layers(model: PreTrainedModel) -> nn.ModuleList | None:
    """A causal LM's decoder layers, its decoder's `layers` list (as Llama's); None for another shape."""
    layers = getattr(model.get_decoder(), "layers", None)
    return layers if isinstance(layers, nn.ModuleList) else None


def shareable_decoder_layers(model: PreTrainedModel) -> tuple[str, nn.ModuleList] | None:
    """The model's decoder layers and their name (`model.layers`), when its family and attention
    (sdpa or eager: a tensor mask) let their rows be cut; None otherwise."""
    attention = getattr(model.config, "_attn_implementation", None) or "sdpa"
    layers = decoder_layers(model)
    if model.config.model_type not in SHAREABLE_MODEL_TYPES or attention not in ("sdpa", "eager") or layers is None:
        return None
    return next(name for name, module in model.named_modules() if module is layers), layers


@runtime_checkable
class RowSlotCache(Protocol):
    """A cache with a slot per batch row in every layer, which can take the keys of some rows."""

    def update_rows(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class _RowsOf:
    """What a layer that runs some rows sees of a `RowSlotCache`: its own rows' keys and values."""

    def __init__(self, cache: RowSlotCache, rows: torch.Tensor) -> None:
        self._cache, self._rows = cache, rows

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._cache.update_rows(key_states, value_states, layer_idx, self._rows)


class SharedRows:
    """Runs a row plan through a model's decoder layers (forward pre-hooks: no module is renamed).

    `begin` before a forward, `end` after; between them layer i runs the plan's rows and `slots()`
    gives the LoRA slots of the rows of the layer under way.
    """

    def __init__(self, layers: nn.ModuleList) -> None:
        self.num_layers = len(layers)
        self._num_rows = 0
        self._steps: list[tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]] | None = None
        self._slots: torch.Tensor | None = None  # the layer under way's rows' slots (None: no LoRA)
        for index, layer in enumerate(layers):
            layer.register_forward_pre_hook(self._hook(index), with_kwargs=True)

    def begin(self, plan: list[LayerRows] | None, slots: list[int], device: torch.device) -> None:
        """Use `plan` (None: every row in every layer) with these per-row LoRA slots (0: none)."""

        def tensor(values: Sequence[int]) -> torch.Tensor:
            return torch.tensor(values, device=device)

        self._slots = tensor(slots) if any(slots) else None
        self._num_rows = len(slots)
        if plan is None:
            self._steps = None
            return
        everyone = tuple(range(len(slots)))
        self._steps = []
        for step in plan + [LayerRows(everyone, None)] * (self.num_layers - len(plan)):
            if step.gather is None and self._steps:  # the same rows as the layer before: no gather
                self._steps.append((self._steps[-1][0], None, self._steps[-1][2]))
                continue
            layer_slots = [slots[i] for i in step.rows]
            self._steps.append(
                (
                    None if step.rows == everyone else tensor(step.rows),
                    None if step.gather is None else tensor(step.gather),
                    tensor(layer_slots) if any(layer_slots) else None,
                )
            )

    def end(self) -> None:
        self._steps, self._slots = None, None

    def slots(self) -> torch.Tensor | None:
        return self._slots

    def _hook(self, index: int) -> Callable[[nn.Module, tuple, dict], tuple[tuple, dict] | None]:
        def before_layer(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            if self._steps is None:
                return None
            rows, gather, self._slots = self._steps[index]
            if gather is not None:
                args = (args[0].index_select(0, gather), *args[1:])
            if rows is not None:
                kwargs = {name: _rows_of(value, rows, self._num_rows) for name, value in kwargs.items()}
            return args, kwargs

        return before_layer


def _rows_of(value: Any, rows: torch.Tensor, num_rows: int) -> Any:
    """A layer argument cut to some of the batch's `num_rows` rows: a per-row tensor (batch first; one
    that broadcasts over the batch stays), each of a pair (rotary cos, sin), a slot cache."""
    if isinstance(value, torch.Tensor) and value.dim() > 1 and value.shape[0] == num_rows:
        return value.index_select(0, rows)
    if isinstance(value, tuple):
        return tuple(_rows_of(part, rows, num_rows) for part in value)
    if isinstance(value, RowSlotCache):
        return _RowsOf(value, rows)
    return value
