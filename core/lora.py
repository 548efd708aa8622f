"""The base model with every loaded LoRA adapter; one forward serves rows of many adapters and base rows.

Each targeted linear layer keeps the LoRA weights of all loaded adapters stacked by slot
(`[slots, rank, in]` and `[slots, out, rank]`, slot 0 all zeros for base rows). A forward gathers
each row's slot and applies its delta with two batched matmuls, so a step costs the same whether
its rows use one adapter or many (peft's mixed batches loop over the adapters of every layer, which
cost ~20% of a step with 8 distinct adapters). Smaller ranks are zero-padded to the largest one:
zero columns add nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache

from qadapter.core.errors import AdapterNotFound, InvalidAdapter


@dataclass(frozen=True)
class LoraWeights:
    """One adapter's LoRA as the host applies it: per base module, A `[rank, in]` and B `[out, rank]`
    with the LoRA scaling already folded into B."""

    modules: Mapping[str, tuple[torch.Tensor, torch.Tensor]]

    @property
    def max_rank(self) -> int:
        return max(a.shape[0] for a, _ in self.modules.values())


class _RowSlots:
    """The adapter slot of every batch row in the forward under way (None: no LoRA at all)."""

    def __init__(self) -> None:
        self.slots: torch.Tensor | None = None  # [rows] long


class LoraLinear(nn.Module):
    """A frozen linear layer plus, per batch row, the LoRA delta of that row's adapter."""

    def __init__(self, base: nn.Linear, row_slots: _RowSlots) -> None:
        super().__init__()
        self.base = base
        self.row_slots = row_slots
        self.lora_a: torch.Tensor | None = None  # [slots, rank, in]
        self.lora_b: torch.Tensor | None = None  # [slots, out, rank], scaling folded in

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [rows, seq, in]
        out = self.base(x)
        slots = self.row_slots.slots
        if slots is None or self.lora_a is None or self.lora_b is None:
            return out
        a, b = self.lora_a[slots], self.lora_b[slots]  # [rows, rank, in], [rows, out, rank]
        return out + torch.bmm(torch.bmm(x, a.transpose(1, 2)), b.transpose(1, 2))


class AdapterHost:
    """Owns the base model and the LoRA weights of every loaded adapter."""

    def __init__(self, model: PreTrainedModel) -> None:
        self._model = model
        self._row_slots = _RowSlots()
        self._layers: dict[str, LoraLinear] = {}  # module name → wrapped layer
        self._slot_of: dict[str, int] = {}  # adapter name → slot (1-based; 0 = no adapter)

    @property
    def device(self) -> torch.device:
        return self._model.device

    @property
    def adapter_names(self) -> list[str]:
        return list(self._slot_of)

    @property
    def lora_bytes(self) -> int:
        """Memory held by the stacked LoRA weights of every loaded adapter."""
        return sum(
            t.numel() * t.element_size()
            for layer in self._layers.values()
            for t in (layer.lora_a, layer.lora_b)
            if t is not None
        )

    def load(self, key: str, weights: LoraWeights) -> None:
        """Add an adapter's weights in a new slot, selected by `key` in `row_adapters`; all or nothing."""
        if key in self._slot_of:
            raise InvalidAdapter(f"an adapter named {key!r} is already loaded")
        new_slot = len(self._slot_of) + 1
        layers = {**self._layers, **{m: self._wrapped(m) for m in weights.modules if m not in self._layers}}
        current = [layer.lora_a.shape[1] for layer in self._layers.values() if layer.lora_a is not None]
        rank = max([weights.max_rank, *current])
        stacks = {}
        for module, layer in layers.items():  # build every new stack first, then publish them all
            a, b = _grown(layer, new_slot + 1, rank)
            if module in weights.modules:
                lora_a, lora_b = weights.modules[module]
                a[new_slot, : lora_a.shape[0]] = lora_a.to(a.dtype)
                b[new_slot, :, : lora_b.shape[1]] = lora_b.to(b.dtype)
            stacks[module] = (a, b)
        for module, layer in layers.items():
            if module not in self._layers:
                self._install(module, layer)
            layer.lora_a, layer.lora_b = stacks[module]
        self._slot_of[key] = new_slot

    def unload(self, name: str) -> None:
        """Remove an adapter's slot and free its weights (no running row may still use it)."""
        slot = self._slot_of.pop(name, None)
        if slot is None:
            raise AdapterNotFound(f"adapter {name!r} is not loaded")
        for layer in self._layers.values():
            assert layer.lora_a is not None and layer.lora_b is not None
            if not self._slot_of:  # the last one: drop the base slot's zeros too
                layer.lora_a, layer.lora_b = None, None
                continue
            keep = [i for i in range(layer.lora_a.shape[0]) if i != slot]
            layer.lora_a, layer.lora_b = layer.lora_a[keep], layer.lora_b[keep]  # new tensors: old freed
        self._slot_of = {n: s - (s > slot) for n, s in self._slot_of.items()}

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        cache: Cache | None,
        row_adapters: Sequence[str | None],
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Cache]:
        """Next-token logits `[rows, vocab]` (last position only) and the updated cache.

        Row i uses adapter row_adapters[i], or none. Only the last position's logits are computed:
        the vocabulary projection over a whole prompt would cost more than the rest of a prefill.
        """
        unknown = {name for name in row_adapters if name is not None and name not in self._slot_of}
        if unknown:
            raise AdapterNotFound(f"adapters {sorted(unknown)} are not loaded")
        slots = [0 if name is None else self._slot_of[name] for name in row_adapters]
        self._row_slots.slots = torch.tensor(slots, device=self.device) if any(slots) else None
        try:
            out = self._model(
                input_ids=input_ids,
                cache=cache,
                use_cache=True,
                attention_mask=attention_mask,
                position_ids=position_ids,
                logits_to_keep=1,
            )
        finally:
            self._row_slots.slots = None
        return out.logits[:, -1, :], out.cache

    def _wrapped(self, module: str) -> LoraLinear:
        base = self._model.get_submodule(module)
        assert isinstance(base, nn.Linear), f"{module} is not a linear layer"  # validate() checked
        return LoraLinear(base, self._row_slots)

    def _install(self, module: str, layer: LoraLinear) -> None:
        parent, _, child = module.rpartition(".")
        setattr(self._model.get_submodule(parent), child, layer)
        self._layers[module] = layer


def _grown(layer: LoraLinear, num_slots: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero stacks of `num_slots` slots at `rank`, holding the layer's current slots."""
    weight = layer.base.weight
    out_features, in_features = weight.shape
    a = torch.zeros((num_slots, rank, in_features), dtype=weight.dtype, device=weight.device)
    b = torch.zeros((num_slots, out_features, rank), dtype=weight.dtype, device=weight.device)
    if layer.lora_a is not None and layer.lora_b is not None:
        old_slots, old_rank = layer.lora_a.shape[:2]
        a[:old_slots, :old_rank] = layer.lora_a
        b[:old_slots, :, :old_rank] = layer.lora_b
    return a, b
