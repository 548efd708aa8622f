"""Synthetic adapters with random LoRA weights, for benchmarks and tests: any base, any count, no
training (speed does not depend on the weights' values)."""

from __future__ import annotations

from pathlib import Path

import torch

from qadapter.adapters.format import AdapterLimits, LoraSpec, Manifest, ValidatedAdapter, create
from qadapter.adapters.peft_files import tensor_key
from qadapter.core.base import BaseModelInfo
from qadapter.core.knobs import Knobs


def random_lora_weights(
    base: BaseModelInfo, lora: LoraSpec, seed: int = 0, b_std: float = 0.0
) -> dict[str, torch.Tensor]:
    """LoRA tensors for every targeted base layer: A ~ N(0, 1/r); B zero (b_std=0) or N(0, b_std)."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for module, (out_features, in_features) in sorted(base.linear_modules().items()):
        if not lora.adapts(module):
            continue
        weights[tensor_key(module, "A")] = torch.randn(lora.r, in_features, generator=generator) / lora.r**0.5
        weights[tensor_key(module, "B")] = torch.randn(out_features, lora.r, generator=generator) * b_std
    return weights


def random_adapter(
    path: Path,
    base: BaseModelInfo,
    name: str,
    b_std: float = 0.0,
    knobs: Knobs = Knobs(),
    lora: LoraSpec = LoraSpec(),
    seed: int = 0,
    training: dict[str, object] | None = None,
    limits: AdapterLimits = AdapterLimits(),
) -> ValidatedAdapter:
    """Write a valid adapter: a zero LoRA (b_std 0, an untrained adapter) or a random one, B ~ N(0, b_std)."""
    manifest = Manifest(
        name=name,
        base_model={"id": base.id, "fingerprint": base.fingerprint},
        alpha=knobs.alpha,
        omega=knobs.omega,
        training=training,
    )
    return create(path, manifest, lora, random_lora_weights(base, lora, seed=seed, b_std=b_std), base, limits)


POISON_MAX_WEIGHT = 1e38  # what --max-lora-weight must be for a server to serve `poisoned_adapter`


def poisoned_adapter(path: Path, base: BaseModelInfo, name: str = "poison") -> ValidatedAdapter:
    """Finite LoRA weights so large that the adapter's scores are inf or NaN: past the default weight
    limit, so only a server started with --max-lora-weight POISON_MAX_WEIGHT serves it (a fault test)."""
    return random_adapter(path, base, name=name, b_std=1e37, limits=AdapterLimits(max_weight=POISON_MAX_WEIGHT))
