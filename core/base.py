"""What an adapter needs to know about the base model it runs on: its id, fingerprint and shapes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn
from transformers import PretrainedConfig

# Config fields that change what a LoRA computes. Bookkeeping fields (dtype, library version,
# source path, quantisation of the file it came from) are left out, so the same weights give the
# same fingerprint whether converted from GGUF, reloaded from the cache or run in bf16.
_ARCHITECTURE_KEYS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_parameters",
    "rope_scaling",
    "tie_word_embeddings",
)


@dataclass(frozen=True)
class BaseModelInfo:
    """The served base model as adapters see it."""

    id: str
    fingerprint: str
    param_shapes: Mapping[str, tuple[int, ...]]  # parameter name → shape

    @classmethod
    def from_model(cls, model: nn.Module, model_id: str) -> BaseModelInfo:
        """Describe a loaded model (cheap: reads the config and parameter shapes, not the values)."""
        shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
        return cls(id=model_id, fingerprint=fingerprint(model.config, shapes), param_shapes=shapes)

    def linear_modules(self) -> dict[str, tuple[int, int]]:
        """Module name → (out_features, in_features) of every 2-D weight a LoRA may target."""
        return {
            name.removesuffix(".weight"): (shape[0], shape[1])
            for name, shape in self.param_shapes.items()
            if name.endswith(".weight") and len(shape) == 2 and "embed" not in name
        }


def fingerprint(config: PretrainedConfig, param_shapes: Mapping[str, tuple[int, ...]]) -> str:
    """A short hash of the architecture config and every parameter's name and shape."""
    settings = config.to_dict()
    described = {
        "config": {key: _rounded(settings[key]) for key in _ARCHITECTURE_KEYS if settings.get(key) is not None},
        "params": sorted((name, list(shape)) for name, shape in param_shapes.items()),
    }
    digest = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode())
    return "sha256:" + digest.hexdigest()[:16]


def _rounded(value: object) -> object:
    """Floats to 6 significant digits: GGUF stores them as float32 (1e-05 reads back 9.99999974e-06)."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    return value
