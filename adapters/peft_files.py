"""The PEFT half of an adapter: what `adapter_config.json` and `adapter_model.safetensors` may hold
for this server (checked against the served base), and reading their weights for the LoRA host."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from qadapter.core.base import BaseModelInfo
from qadapter.core.errors import InvalidAdapter
from qadapter.core.lora import LoraWeights

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# lora_alpha / r scales a LoRA's output; typical values are 8-512. Past this bound it is a mistake or
# an attack (a huge scale drives the served logits to inf), refused before any weight is read.
MAX_LORA_ALPHA = 4096

# peft saves LoRA weights as `base_model.model.<module>.lora_A.weight` / `.lora_B.weight`.
_TENSOR_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight")


def tensor_key(module: str, part: str) -> str:
    """The safetensors key of a module's lora_A ("A") or lora_B ("B") weight."""
    return f"base_model.model.{module}.lora_{part}.weight"


def read_lora_weights(path: Path, name: str, scalings: Mapping[str, float]) -> LoraWeights:
    """The weights of a validated adapter directory, B scaled as peft applies it (module → scaling)."""
    try:
        tensors = load_file(path / WEIGHTS_FILE)
        modules = {
            module: (tensors[tensor_key(module, "A")], tensors[tensor_key(module, "B")].float() * scaling)
            for module, scaling in scalings.items()
        }
    except (OSError, SafetensorError, KeyError) as exc:
        raise InvalidAdapter(f"adapter {name!r} could not be loaded: {exc}") from None
    return LoraWeights(modules)


def module_scaling(config: Mapping[str, Any], module: str, rank: int) -> float:
    lora_alpha = _pattern_value(dict(config.get("alpha_pattern") or {}), module, config["lora_alpha"])
    return lora_alpha / (rank**0.5 if config.get("use_rslora") else rank)


def check_lora_config(config: Mapping[str, Any], base: BaseModelInfo, max_rank: int) -> dict[str, int]:
    """Check the LoRA config; return the base modules it wraps → the rank each must have."""
    if config.get("peft_type") != "LORA":
        raise InvalidAdapter(f"{CONFIG_FILE}: peft_type must be 'LORA', not {config.get('peft_type')!r}")
    if config.get("use_dora"):
        raise InvalidAdapter(f"{CONFIG_FILE}: DoRA adapters (use_dora) are not supported; train a plain LoRA")
    if config.get("modules_to_save"):
        raise InvalidAdapter(
            f"{CONFIG_FILE}: modules_to_save ({config['modules_to_save']}) is not supported: "
            "a Q-adapter may only add LoRA weights to the frozen base"
        )
    for key in _UNSUPPORTED_OPTIONS:
        if config.get(key) not in (None, False, "none", [], {}):
            raise InvalidAdapter(f"{CONFIG_FILE}: {key}={config[key]!r} is not supported by this server")
    alphas = {"lora_alpha": config.get("lora_alpha")}
    alphas |= {f"alpha_pattern.{key}": value for key, value in dict(config.get("alpha_pattern") or {}).items()}
    for field, value in alphas.items():
        if not _is_number(value) or not 0 < value <= MAX_LORA_ALPHA:  # also refuses nan
            raise InvalidAdapter(
                f"{CONFIG_FILE}: {field} must be a number in (0, {MAX_LORA_ALPHA}], got {value!r}", param=field
            )
    dropout = config.get("lora_dropout", 0.0)
    if dropout is not None and (not _is_number(dropout) or not 0.0 <= dropout < 1.0):
        raise InvalidAdapter(
            f"{CONFIG_FILE}: lora_dropout must be a number in [0, 1), got {dropout!r}", param="lora_dropout"
        )
    rank_pattern = dict(config.get("rank_pattern") or {})
    ranks = [config.get("r"), *rank_pattern.values()]
    if not all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in ranks):
        raise InvalidAdapter(f"{CONFIG_FILE}: LoRA ranks must be positive integers, got {ranks}")
    if max(ranks) > max_rank:
        raise InvalidAdapter(f"{CONFIG_FILE}: LoRA rank {max(ranks)} is above this server's maximum of {max_rank}")
    wrapped = _targeted_modules(config.get("target_modules"), base)
    return {module: _pattern_value(rank_pattern, module, config["r"]) for module in wrapped}


# Options that change what a LoRA computes beyond lora_B @ lora_A, or which layers it touches.
_UNSUPPORTED_OPTIONS = (
    "bias",
    "lora_bias",
    "layers_to_transform",
    "layers_pattern",
    "layer_replication",
    "trainable_token_indices",
    "target_parameters",
    "use_qalora",
    "fan_in_fan_out",
)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _pattern_value(pattern: Mapping[str, Any], module: str, default: Any) -> Any:
    """peft's rank_pattern lookup: the first key that matches the end of the module name."""
    for key, value in pattern.items():
        if _regex(key, "a rank_pattern or alpha_pattern key").match(module) is not None:
            return value
    return default


def _regex(pattern: str, what: str, whole: bool = False) -> re.Pattern[str]:
    """peft's pattern (a key matches the end of a module name; a target_modules string all of it)."""
    try:
        return re.compile(pattern if whole else rf"(.*\.)?({pattern})$")
    except re.error as exc:
        raise InvalidAdapter(f"{CONFIG_FILE}: {what} {pattern!r} is not a valid regular expression ({exc})") from None


def _targeted_modules(targets: Any, base: BaseModelInfo) -> set[str]:
    """The base linear layers peft would wrap for `target_modules` (same matching rules as peft)."""
    modules = base.linear_modules()
    if isinstance(targets, str):  # a regex over full module names
        target = _regex(targets, "target_modules", whole=True)
        wrapped = {name for name in modules if target.fullmatch(name)}
        if not wrapped:
            raise InvalidAdapter(
                f"{CONFIG_FILE}: target_modules pattern {targets!r} matches no linear layer of base model {base.id!r}"
            )
        return wrapped
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise InvalidAdapter(f"{CONFIG_FILE}: target_modules must be a non-empty list of names or a regex string")
    matches = {t: {name for name in modules if name == t or name.endswith("." + t)} for t in targets}
    unknown = [t for t, found in matches.items() if not found]
    if unknown:
        layer_names = sorted({name.rsplit(".", 1)[-1] for name in modules})
        raise InvalidAdapter(
            f"{CONFIG_FILE}: LoRA target modules {unknown} do not exist in base model {base.id!r} "
            f"(its linear layers are {layer_names})"
        )
    return set().union(*matches.values())


def check_tensors(path: Path, base: BaseModelInfo, expected_ranks: Mapping[str, int], max_weight: float) -> None:
    """Check every tensor against the base and the config: names, shapes, ranks, dtype, values (finite,
    at most `max_weight` in magnitude)."""
    try:
        weights = load_file(path)
    except (SafetensorError, OSError) as exc:
        raise InvalidAdapter(f"{WEIGHTS_FILE} is corrupt or truncated ({exc}); upload it again") from None
    modules = base.linear_modules()
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in weights.items():
        match = _TENSOR_KEY.fullmatch(key)
        if match is None:
            raise InvalidAdapter(
                f"{WEIGHTS_FILE}: unexpected tensor {key!r}; only LoRA lora_A/lora_B weights are allowed"
            )
        if match["module"] not in modules:
            raise InvalidAdapter(f"{WEIGHTS_FILE}: tensor {key!r} targets a module that base model {base.id!r} lacks")
        if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
            raise InvalidAdapter(f"{WEIGHTS_FILE}: tensor {key!r} must hold finite floating-point values")
        if tensor.numel() and (largest := float(tensor.abs().max())) > max_weight:
            raise InvalidAdapter(
                f"{WEIGHTS_FILE}: tensor {key!r} holds a weight of magnitude {largest:.3g}, above this server's "
                f"limit of {max_weight:g} (no trained LoRA comes near it; QADAPTER_MAX_LORA_WEIGHT raises it)"
            )
        parts.setdefault(match["module"], {})[match["part"]] = tensor
    if set(parts) != set(expected_ranks):
        extra, missing = sorted(set(parts) - set(expected_ranks)), sorted(set(expected_ranks) - set(parts))
        raise InvalidAdapter(
            f"{WEIGHTS_FILE} does not match {CONFIG_FILE}: tensors for modules outside target_modules "
            f"{extra}, targeted modules without tensors {missing}"
        )
    for module, pair in parts.items():
        out_features, in_features = modules[module]
        a, b = pair.get("A"), pair.get("B")
        if a is None or b is None:
            raise InvalidAdapter(f"{WEIGHTS_FILE}: module {module!r} has lora_A or lora_B but not both")
        rank = expected_ranks[module]
        if tuple(a.shape) != (rank, in_features) or tuple(b.shape) != (out_features, rank):
            raise InvalidAdapter(
                f"{WEIGHTS_FILE}: LoRA shapes for {module!r} (A {list(a.shape)}, B {list(b.shape)}) do not fit "
                f"the base layer [{out_features}, {in_features}] at rank {rank}; expected A [{rank}, "
                f"{in_features}] and B [{out_features}, {rank}]"
            )
