"""The base model with its loaded LoRA adapters: one forward serves rows of many adapters and base rows."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from peft import PeftModel
from safetensors import SafetensorError
from transformers import PreTrainedModel
from transformers.cache_utils import Cache

from adapters.errors import AdapterNotFound, InvalidAdapter
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
        try:
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(self._base, str(adapter.path), adapter_name=slot)
            else:
                self._peft.load_adapter(str(adapter.path), adapter_name=slot)
        except (OSError, RuntimeError, ValueError, SafetensorError) as exc:
            # validate() makes this rare (files changed or vanished since): take back what was injected.
            if self._peft is not None and slot in self._peft.peft_config:
                self._peft.delete_adapter(slot)
            raise InvalidAdapter(f"adapter {adapter.name!r} could not be loaded: {exc}") from None
        self._peft.eval()
        self._slots[adapter.name] = slot

    def has(self, name: str) -> bool:
        return name in self._slots

    def unload(self, name: str) -> None:
        """Remove an adapter's LoRA weights (no running row may still use it)."""
        assert self._peft is not None
        self._peft.delete_adapter(self._slots.pop(name))

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        cache: Cache | None,
        row_adapters: Sequence[str | None],
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Cache]:
        """Logits `[rows, seq, vocab]` and the updated cache; row i uses adapter row_adapters[i] or none."""
        inputs = dict(
            input_ids=input_ids, cache=cache, use_cache=True, attention_mask=attention_mask, position_ids=position_ids
        )
        if self._peft is None:
            if any(name is not None for name in row_adapters):
                raise AdapterNotFound(f"no adapters are loaded, but rows ask for {set(row_adapters) - {None}}")
            out = self._base(**inputs)
        else:
            unknown = {name for name in row_adapters if name is not None and name not in self._slots}
            if unknown:
                raise AdapterNotFound(f"adapters {sorted(unknown)} are not loaded")
            keys = [BASE_ROW if name is None else self._slots[name] for name in row_adapters]
            out = self._peft(**inputs, adapter_names=keys)
        return out.logits, out.cache
