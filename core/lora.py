"""The base model with every loaded LoRA adapter; one forward serves rows of many adapters and base rows.

Each targeted linear layer keeps the LoRA weights of the loaded adapters in a slot pool
(`[slots, rank, in]` and `[slots, out, rank]`; slot 0 stays zero for base rows). A forward gathers
each row's slot and applies its delta with two batched matmuls, so a step costs the same whether
its rows use one adapter or many (peft's mixed batches loop over the adapters of every layer, which
cost ~20% of a step with 8 distinct adapters). Smaller ranks are zero-padded to the pool's rank.

A load writes one adapter into a free slot in place and an unload frees its slot: neither copies
the other adapters. The pool is sized for `num_slots` adapters when a layer is first wrapped (the
server asks for --max-resident-adapters + 1) and only grows, doubling, past that (every resident
adapter pinned) or for a larger rank; before it allocates, it checks that the memory is free.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache

from qadapter.core.errors import AdapterNotFound, InvalidAdapter
from qadapter.core.few_rows import use_few_rows_linear
from qadapter.core.memory import free_bytes
from qadapter.core.shared_rows import LayerRows, SharedRows, row_plan, shareable_decoder_layers

log = logging.getLogger(__name__)
DEFAULT_SLOTS = 4  # slot 0 (zeros) and room for three adapters before the first growth


@dataclass(frozen=True)
class LoraWeights:
    """One adapter's LoRA as the host applies it: per base module, A `[rank, in]` and B `[out, rank]`
    with the LoRA scaling already folded into B."""

    modules: Mapping[str, tuple[torch.Tensor, torch.Tensor]]

    @property
    def max_rank(self) -> int:
        return max(a.shape[0] for a, _ in self.modules.values())

    def pinned(self) -> LoraWeights:
        """The same weights in page-locked host memory, so the copy to a GPU slot can run asynchronously."""
        return LoraWeights({m: (a.pin_memory(), b.pin_memory()) for m, (a, b) in self.modules.items()})


class LoraLinear(nn.Module):
    """A frozen linear layer plus, per batch row, the LoRA delta of that row's adapter."""

    def __init__(self, base: nn.Linear, rows: SharedRows, num_slots: int, rank: int) -> None:
        super().__init__()
        self.base = base
        self.rows = rows
        out_features, in_features = base.weight.shape
        like = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.lora_a = torch.zeros((num_slots, rank, in_features), **like)  # type: ignore[arg-type]
        self.lora_b = torch.zeros((num_slots, out_features, rank), **like)  # type: ignore[arg-type]  # scaled

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [rows, seq, in]
        out = self.base(x)
        slots = self.rows.slots()  # of the rows this layer runs
        if slots is None:
            return out
        a, b = self.lora_a[slots], self.lora_b[slots]  # [rows, rank, in], [rows, out, rank]
        return out + torch.bmm(torch.bmm(x, a.transpose(1, 2)), b.transpose(1, 2))

    def write(self, slot: int, weights: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """Put one adapter's A and B (or zeros, for a module it leaves alone) into a slot."""
        self.lora_a[slot].zero_()
        self.lora_b[slot].zero_()
        if weights is not None:
            a, b = weights
            self.lora_a[slot, : a.shape[0]].copy_(a, non_blocking=True)
            self.lora_b[slot, :, : b.shape[1]].copy_(b, non_blocking=True)

    def resize(self, num_slots: int, rank: int) -> None:
        """Larger stacks holding the current ones (a rare, geometric growth)."""
        a = self.lora_a.new_zeros((num_slots, rank, self.lora_a.shape[2]))
        b = self.lora_b.new_zeros((num_slots, self.lora_b.shape[1], rank))
        old_slots, old_rank = self.lora_a.shape[:2]
        a[:old_slots, :old_rank] = self.lora_a
        b[:old_slots, :, :old_rank] = self.lora_b
        self.lora_a, self.lora_b = a, b


class AdapterHost:
    """Owns the base model and the slot pool of every loaded adapter's LoRA weights."""

    def __init__(self, model: PreTrainedModel, num_slots: int = DEFAULT_SLOTS, share_lower_layers: bool = True) -> None:
        self._model = model
        use_few_rows_linear(model)  # decode steps run few rows
        decoder = shareable_decoder_layers(model)
        self._layer_prefix = f"{decoder[0]}." if decoder else None  # `model.layers.`: none, no sharing
        self._rows = SharedRows(decoder[1] if decoder else nn.ModuleList())
        self.share_lower_layers = share_lower_layers
        self._layers: dict[str, LoraLinear] = {}  # module name → wrapped layer
        self._slot_of: dict[str, int] = {}  # adapter key → its slot (0: no adapter)
        self._first_layer: dict[str, int] = {}  # adapter key → its lowest adapted decoder layer
        self._num_slots = max(2, num_slots)
        self._rank = 0

    @property
    def device(self) -> torch.device:
        return self._model.device

    @property
    def dtype(self) -> torch.dtype:
        return self._model.dtype

    @property
    def uses_additive_masks(self) -> bool:
        """Whether the model's attention adds its mask to the scores (eager) rather than taking booleans."""
        return getattr(self._model.config, "_attn_implementation", "sdpa") == "eager"

    @property
    def share_lower_layers(self) -> bool:
        return self._share

    @share_lower_layers.setter
    def share_lower_layers(self, share: bool) -> None:
        """Switched only while no row runs (a decoding row's cached keys depend on it): the benches' A/B."""
        self._share = share and self._rows.num_layers > 0

    @property
    def adapter_names(self) -> list[str]:
        return list(self._slot_of)

    def slot_of(self, key: str) -> int:
        """The pool slot an adapter occupies."""
        return self._slot_of[key]

    @property
    def lora_bytes(self) -> int:
        """Memory the slot pool holds (loaded adapters and free slots)."""
        return sum(
            t.numel() * t.element_size() for layer in self._layers.values() for t in (layer.lora_a, layer.lora_b)
        )

    def load(self, key: str, weights: LoraWeights) -> None:
        """Write an adapter's weights into a free slot, selected by `key` in `row_adapters`; all or nothing."""
        if key in self._slot_of:
            raise InvalidAdapter(f"an adapter named {key!r} is already loaded")
        new_modules = [m for m in weights.modules if m not in self._layers]
        num_slots = self._num_slots * 2 if len(self._slot_of) + 1 >= self._num_slots else self._num_slots
        rank = self._rank if weights.max_rank <= self._rank else max(weights.max_rank, 2 * self._rank)
        self._check_room(new_modules, num_slots, rank)  # before anything changes
        if (num_slots, rank) != (self._num_slots, self._rank):
            for layer in self._layers.values():
                layer.resize(num_slots, rank)
            self._num_slots, self._rank = num_slots, rank
            log.info("LoRA slot pool: %d slots × rank %d, %.1f MiB", num_slots, rank, self.lora_bytes / 2**20)
        for module in new_modules:
            self._install(module, LoraLinear(self._base_linear(module), self._rows, num_slots, rank))
        if new_modules:
            log.info(
                "LoRA slot pool: %d slots × rank %d over %d layers, %.1f MiB",
                num_slots,
                rank,
                len(self._layers),
                self.lora_bytes / 2**20,
            )
        slot = min(set(range(1, self._num_slots)) - set(self._slot_of.values()))
        for module, layer in self._layers.items():
            layer.write(slot, weights.modules.get(module))
        self._slot_of[key] = slot
        self._first_layer[key] = min(map(self._decoder_layer, weights.modules), default=0)

    def unload(self, key: str) -> None:
        """Free an adapter's slot (no running row may still use it); nothing else moves."""
        if self._slot_of.pop(key, None) is None:
            raise AdapterNotFound(f"adapter {key!r} is not loaded")
        del self._first_layer[key]

    def row_plan(self, row_adapters: Sequence[str | None], partners: Sequence[int | None]) -> list[LayerRows] | None:
        """The rows each decoder layer runs when row i shares the layers below its adapter's lowest
        adapted one with row partners[i] (its base row; None: shares nothing). None: every row, every
        layer (no row shares, or sharing is off)."""
        if not self._share:
            return None
        return row_plan([self._first_layer.get(name, 0) if name else 0 for name in row_adapters], partners)

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        cache: Cache | None,
        row_adapters: Sequence[str | None],
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        all_positions: bool = False,
        plan: list[LayerRows] | None = None,
    ) -> tuple[torch.Tensor, Cache]:
        """Next-token logits `[rows, vocab]` (last position only) and the updated cache; with
        `all_positions`, the logits of every input position `[rows, columns, vocab]`.

        Row i uses adapter row_adapters[i], or none; `plan` (from `row_plan` over the same rows) says
        which rows each decoder layer runs (None: every row). By default only the last position's logits
        are computed: the vocabulary projection over a whole prompt would cost more than the rest of a prefill.
        """
        unknown = {name for name in row_adapters if name is not None and name not in self._slot_of}
        if unknown:
            raise AdapterNotFound(f"adapters {sorted(unknown)} are not loaded")
        slots = [0 if name is None else self._slot_of[name] for name in row_adapters]
        self._rows.begin(plan, slots, self.device)
        try:
            out = self._model(
                input_ids=input_ids,
                cache=cache,
                use_cache=True,
                attention_mask=attention_mask,
                position_ids=position_ids,
                logits_to_keep=0 if all_positions else 1,
            )
        finally:
            self._rows.end()
        return (out.logits if all_positions else out.logits[:, -1, :]), out.cache

    def _check_room(self, new_modules: list[str], num_slots: int, rank: int) -> None:
        """Refuse, with what to change, a growth the device has no memory for."""
        element = next(self._model.parameters()).element_size()
        grown = sum(
            (num_slots * rank - layer.lora_a.shape[0] * layer.lora_a.shape[1]) * sum(layer.base.weight.shape)
            for layer in self._layers.values()
        )
        added = sum(num_slots * rank * sum(self._base_linear(m).weight.shape) for m in new_modules)
        needed = (grown + added) * element
        available = free_bytes(self.device)
        if needed and available is not None and needed > available:
            raise InvalidAdapter(
                f"the LoRA slot pool would need {needed / 2**20:.0f} MiB more to grow to {num_slots} slots × rank "
                f"{rank}, and {self.device} has {available / 2**20:.0f} MiB free; lower --max-resident-adapters "
                "or --max-lora-rank, or serve adapters of a smaller rank"
            )

    def _decoder_layer(self, module: str) -> int:
        """The decoder layer a module is in; 0 for one outside them (nothing below it is shared)."""
        if self._layer_prefix is None or not module.startswith(self._layer_prefix):
            return 0
        return int(module[len(self._layer_prefix) :].split(".", 1)[0])

    def _base_linear(self, module: str) -> nn.Linear:
        base = self._model.get_submodule(module)
        assert isinstance(base, nn.Linear), f"{module} is not a linear layer"  # validate() checked
        return base

    def _install(self, module: str, layer: LoraLinear) -> None:
        parent, _, child = module.rpartition(".")
        setattr(self._model.get_submodule(parent), child, layer)
        self._layers[module] = layer
