"""The Q-adapter directory format (DESIGN.md §3): PEFT LoRA files plus a `qadapter.json` manifest.

`validate` is the one gate every adapter passes before it is loaded, uploaded or published;
`create` writes a valid adapter (tests, the trainer).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
from peft import LoraConfig
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from adapters.base import BaseModelInfo
from adapters.bounds import (
    DEFAULT_ALPHA,
    DEFAULT_OMEGA,
    MAX_ALPHA,
    MAX_OMEGA,
    MIN_ALPHA,
)
from adapters.errors import InvalidAdapter

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MANIFEST_FILE = "qadapter.json"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, MANIFEST_FILE)
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
DEFAULT_MAX_RANK = 64
FORMAT_VERSION = 1

# peft saves LoRA weights as `base_model.model.<module>.lora_A.weight` / `.lora_B.weight`.
_TENSOR_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight")


class BaseModelRef(BaseModel):
    """The base model an adapter was trained on."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)
    fingerprint: str = Field(min_length=1)


class Manifest(BaseModel):
    """`qadapter.json`: who the adapter is and how its Q-values combine with the base."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    format_version: Literal[1] = FORMAT_VERSION
    name: str
    description: str = ""
    base_model: BaseModelRef
    alpha: float = Field(default=DEFAULT_ALPHA, ge=MIN_ALPHA, le=MAX_ALPHA)
    omega: float = Field(default=DEFAULT_OMEGA, ge=0, le=MAX_OMEGA)
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))
    training: dict[str, Any] | None = None


@dataclass(frozen=True)
class LoraSpec:
    """The LoRA shape of an adapter (defaults: the Q-Adapter paper's)."""

    r: int = 8
    lora_alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")

    def to_peft(self) -> LoraConfig:
        return LoraConfig(
            r=self.r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            task_type="CAUSAL_LM",
        )


@dataclass(frozen=True)
class ValidatedAdapter:
    """An adapter directory that passed `validate`, with what the server needs to know of it."""

    path: Path
    manifest: Manifest
    modules: tuple[str, ...]  # base modules the LoRA changes
    max_rank: int
    size_bytes: int
    scalings: Mapping[str, float]  # module → lora_alpha / r (or / sqrt(r) with rsLoRA), as peft applies

    @property
    def name(self) -> str:
        return self.manifest.name


def check_name(name: str) -> None:
    """Raise unless `name` is a valid adapter name."""
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidAdapter(
            f"adapter name {name!r} is not allowed: use 1-64 characters from a-z, 0-9, '.', '_' "
            "and '-', starting with a letter or digit"
        )


def validate(path: Path, base: BaseModelInfo, max_rank: int = DEFAULT_MAX_RANK) -> ValidatedAdapter:
    """Check an adapter directory against the format and the served base; raise InvalidAdapter."""
    path = Path(path)
    if not path.is_dir():
        raise InvalidAdapter(f"adapter path {str(path)!r} is not a directory")
    _check_files(path)
    manifest = read_manifest(path / MANIFEST_FILE)
    check_name(manifest.name)
    if manifest.base_model.fingerprint != base.fingerprint:
        raise InvalidAdapter(
            f"adapter {manifest.name!r} was trained for base model {manifest.base_model.id!r} "
            f"(fingerprint {manifest.base_model.fingerprint}), but this server runs {base.id!r} "
            f"(fingerprint {base.fingerprint}); retrain it on the served base"
        )
    config = _read_json(path / CONFIG_FILE)
    ranks = _check_lora_config(config, base, max_rank)
    _check_tensors(path / WEIGHTS_FILE, base, ranks)
    return ValidatedAdapter(
        path=path,
        manifest=manifest,
        modules=tuple(sorted(ranks)),
        max_rank=max(ranks.values()),
        size_bytes=sum(f.stat().st_size for f in path.iterdir() if f.is_file()),
        scalings={module: _scaling(config, module, rank) for module, rank in ranks.items()},
    )


def _scaling(config: Mapping[str, Any], module: str, rank: int) -> float:
    lora_alpha = _pattern_value(dict(config.get("alpha_pattern") or {}), module, config["lora_alpha"])
    return lora_alpha / (rank**0.5 if config.get("use_rslora") else rank)


def _check_files(path: Path) -> None:
    pickles = sorted(
        str(f.relative_to(path)) for f in path.rglob("*") if f.suffix.lower() in PICKLE_SUFFIXES
    )
    if pickles:
        raise InvalidAdapter(
            f"pickle weight files are not accepted (found {', '.join(pickles)}): they can run code "
            f"when loaded; save the weights as {WEIGHTS_FILE}"
        )
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise InvalidAdapter(
            f"adapter directory {str(path)!r} is missing {', '.join(missing)}; "
            f"an adapter needs {', '.join(REQUIRED_FILES)}"
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidAdapter(f"{path.name} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidAdapter(f"{path.name} must hold a JSON object")
    return data


def read_manifest(path: Path) -> Manifest:
    data = _read_json(path)
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()
        )
        raise InvalidAdapter(f"{MANIFEST_FILE} does not match the manifest schema: {problems}") from None


def _check_lora_config(config: Mapping[str, Any], base: BaseModelInfo, max_rank: int) -> dict[str, int]:
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
    if not _is_number(config.get("lora_alpha")) or not all(map(_is_number, (config.get("alpha_pattern") or {}).values())):
        raise InvalidAdapter(f"{CONFIG_FILE}: lora_alpha and alpha_pattern values must be numbers")
    rank_pattern = dict(config.get("rank_pattern") or {})
    ranks = [config.get("r"), *rank_pattern.values()]
    if not all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in ranks):
        raise InvalidAdapter(f"{CONFIG_FILE}: LoRA ranks must be positive integers, got {ranks}")
    if max(ranks) > max_rank:
        raise InvalidAdapter(
            f"{CONFIG_FILE}: LoRA rank {max(ranks)} is above this server's maximum of {max_rank}"
        )
    wrapped = _targeted_modules(config.get("target_modules"), base)
    return {module: _pattern_value(rank_pattern, module, config["r"]) for module in wrapped}


# Options that change what a LoRA computes beyond lora_B @ lora_A, or which layers it touches.
_UNSUPPORTED_OPTIONS = (
    "bias", "lora_bias", "layers_to_transform", "layers_pattern", "layer_replication",
    "trainable_token_indices", "target_parameters", "use_qalora", "fan_in_fan_out",
)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _pattern_value(pattern: Mapping[str, Any], module: str, default: Any) -> Any:
    """peft's rank_pattern lookup: the first key that matches the end of the module name."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _targeted_modules(targets: Any, base: BaseModelInfo) -> set[str]:
    """The base linear layers peft would wrap for `target_modules` (same matching rules as peft)."""
    modules = base.linear_modules()
    if isinstance(targets, str):  # a regex over full module names
        wrapped = {name for name in modules if re.fullmatch(targets, name)}
        if not wrapped:
            raise InvalidAdapter(
                f"{CONFIG_FILE}: target_modules pattern {targets!r} matches no linear layer of "
                f"base model {base.id!r}"
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


def _check_tensors(path: Path, base: BaseModelInfo, expected_ranks: Mapping[str, int]) -> None:
    """Check every tensor against the base and the config: names, shapes, ranks, dtype, values."""
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


def lora_weights(
    base: BaseModelInfo, lora: LoraSpec, seed: int = 0, b_std: float = 0.0
) -> dict[str, torch.Tensor]:
    """LoRA tensors for every targeted base layer: A ~ N(0, 1/r); B zero (b_std=0) or N(0, b_std)."""
    generator = torch.Generator().manual_seed(seed)
    targets = set(lora.target_modules)
    weights = {}
    for module, (out_features, in_features) in sorted(base.linear_modules().items()):
        if module.rsplit(".", 1)[-1] not in targets:
            continue
        prefix = f"base_model.model.{module}"
        weights[f"{prefix}.lora_A.weight"] = torch.randn(lora.r, in_features, generator=generator) / lora.r**0.5
        weights[f"{prefix}.lora_B.weight"] = torch.randn(out_features, lora.r, generator=generator) * b_std
    return weights


def create(
    path: Path,
    manifest: Manifest,
    lora: LoraSpec,
    weights: Mapping[str, torch.Tensor],
    base: BaseModelInfo,
) -> ValidatedAdapter:
    """Write an adapter directory (the three files) and validate it against `base`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lora.to_peft().save_pretrained(str(path))
    save_file({key: t.detach().contiguous().cpu() for key, t in weights.items()}, str(path / WEIGHTS_FILE))
    (path / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return validate(path, base)
