"""The base model with its loaded LoRA adapters: one forward serves rows of many adapters and base rows."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from peft import PeftModel
from transformers import PreTrainedModel
from transformers.cache_utils import Cache

from adapters.errors import InvalidAdapter
from adapters.format import ValidatedAdapter

# peft's name for "no adapter" rows in a mixed-adapter batch.
BASE_ROW = "__base__"


class AdapterHost:
    """Owns the base model and the LoRA weights injected into it (peft mixed-adapter batches)."""

    def __init__(self, model: PreTrainedModel) -> None:
        self._base = model
        self._peft: PeftModel | None = None
        self._slots: dict[str, str] = {}  # adapter name → peft adapter key
        self._num_loaded = 0

    @property
    def device(self) -> torch.device:
        return self._base.device

    @property
    def adapter_names(self) -> list[str]:
        return list(self._slots)

    def load(self, adapter: ValidatedAdapter) -> None:
        """Inject an adapter's LoRA weights; rows then select it by the adapter's name."""
        if adapter.name in self._slots:
            raise InvalidAdapter(f"an adapter named {adapter.name!r} is already loaded")
        # peft keys become module names, which may not contain '.', so each load gets its own slot.
        slot = f"qa{self._num_loaded}"
        self._num_loaded += 1
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(self._base, str(adapter.path), adapter_name=slot)
        else:
            self._peft.load_adapter(str(adapter.path), adapter_name=slot)
        self._peft.eval()
        self._slots[adapter.name] = slot

    @torch.inference_mode()
    def forward(
        self, input_ids: torch.Tensor, cache: Cache | None, row_adapters: Sequence[str | None]
    ) -> tuple[torch.Tensor, Cache]:
        """Logits `[rows, seq, vocab]` and the updated cache; row i uses adapter row_adapters[i] or none."""
        if self._peft is None:
            if any(name is not None for name in row_adapters):
                raise KeyError(f"no adapters are loaded, but rows ask for {set(row_adapters) - {None}}")
            out = self._base(input_ids=input_ids, cache=cache, use_cache=True)
        else:
            keys = [BASE_ROW if name is None else self._slots[name] for name in row_adapters]
            out = self._peft(input_ids=input_ids, cache=cache, use_cache=True, adapter_names=keys)
        return out.logits, out.cache
