"""The Q-adapter directory format (docs/design.md §3): PEFT LoRA files plus a `qadapter.json` manifest.

`validate` is the one gate every adapter passes before it is loaded, uploaded or published;
`create` writes a valid adapter (tests, the trainer).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import save_file

from qadapter.adapters.peft_files import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    check_lora_config,
    check_tensors,
    module_scaling,
    read_lora_weights,
)
from qadapter.core.base import BaseModelInfo
from qadapter.core.errors import InvalidAdapter, InvalidData
from qadapter.core.knobs import DEFAULT_ALPHA, DEFAULT_OMEGA, MAX_ALPHA, MAX_OMEGA, MIN_ALPHA, Knobs
from qadapter.core.lora import LoraWeights
from qadapter.core.settings import DEFAULT_MAX_LORA_WEIGHT, DEFAULT_MAX_RANK, Settings

MANIFEST_FILE = "qadapter.json"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, MANIFEST_FILE)
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
FORMAT_VERSION = 1
MAX_JSON_BYTES = 1 << 20
MAX_JSON_DEPTH = 32
MAX_DESCRIPTION_CHARS = 4096


class BaseModelRef(BaseModel):
    """The base model an adapter was trained on."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=512)
    fingerprint: str = Field(min_length=1, max_length=128)


class Manifest(BaseModel):
    """`qadapter.json`: who the adapter is and how its Q-values combine with the base."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    format_version: Literal[1] = FORMAT_VERSION
    name: str  # check_name() holds it to the name pattern
    description: str = Field(default="", max_length=MAX_DESCRIPTION_CHARS)
    base_model: BaseModelRef
    alpha: float = Field(default=DEFAULT_ALPHA, ge=MIN_ALPHA, le=MAX_ALPHA)
    omega: float = Field(default=DEFAULT_OMEGA, ge=0, le=MAX_OMEGA)
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))
    training: dict[str, Any] | None = None

    @property
    def knobs(self) -> Knobs:
        return Knobs(self.alpha, self.omega)


@dataclass(frozen=True)
class LoraSpec:
    """The LoRA shape of an adapter (defaults: the Q-Adapter paper's)."""

    r: int = 8
    lora_alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    layers: tuple[int, ...] = ()  # the decoder layers adapted; () = every one

    @property
    def first_layer(self) -> int:
        """The lowest adapted layer: the layers below it are the frozen base's alone."""
        return min(self.layers, default=0)

    def on_top(self, num_top: int, num_layers: int) -> LoraSpec:
        """This LoRA on the top `num_top` of `num_layers` decoder layers (0: on every layer)."""
        if num_top > num_layers:
            raise InvalidData(f"the model has {num_layers} layers; --lora-top-layers {num_top} is more")
        return replace(self, layers=tuple(range(num_layers - num_top, num_layers)) if num_top else ())

    def adapts(self, module: str) -> bool:
        """Whether this LoRA targets a base module, by its full name (`model.layers.3.self_attn.q_proj`)."""
        if module.rsplit(".", 1)[-1] not in self.target_modules:
            return False
        layer = re.search(r"\.layers\.(\d+)\.", module)
        return not self.layers or (layer is not None and int(layer.group(1)) in self.layers)

    def peft_config(self) -> dict[str, Any]:
        """`adapter_config.json` as peft reads it (peft fills in what is left out); the server needs no peft.
        Some layers only: `target_modules` is a regex over full module names (peft's and the server's
        rule), not `layers_to_transform`, which LoRA servers read differently."""
        targets: list[str] | str = list(self.target_modules)
        if self.layers:
            numbers, names = "|".join(map(str, sorted(self.layers))), "|".join(map(re.escape, self.target_modules))
            targets = rf".*\.layers\.({numbers})\.(.*\.)?({names})"
        return {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.dropout,
            "target_modules": targets,
            "bias": "none",
        }


@dataclass(frozen=True)
class AdapterLimits:
    """What this server accepts of an adapter's LoRA beyond the format: its rank and weight magnitude."""

    max_rank: int = DEFAULT_MAX_RANK
    max_weight: float = DEFAULT_MAX_LORA_WEIGHT

    @classmethod
    def of(cls, settings: Settings) -> AdapterLimits:
        return cls(settings.max_lora_rank, settings.max_lora_weight)


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

    def read_weights(self) -> LoraWeights:
        """Its LoRA as the host applies it (read from disk now: the file may have changed since)."""
        return read_lora_weights(self.path, self.name, self.scalings)


def check_name(name: str) -> None:
    """Raise unless `name` is a valid adapter name."""
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidAdapter(
            f"adapter name {name!r} is not allowed: use 1-64 characters from a-z, 0-9, '.', '_' "
            "and '-', starting with a letter or digit"
        )


def validate(path: Path, base: BaseModelInfo, limits: AdapterLimits = AdapterLimits()) -> ValidatedAdapter:
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
    ranks = check_lora_config(config, base, limits.max_rank)
    check_tensors(path / WEIGHTS_FILE, base, ranks, limits.max_weight)
    return ValidatedAdapter(
        path=path,
        manifest=manifest,
        modules=tuple(sorted(ranks)),
        max_rank=max(ranks.values()),
        size_bytes=sum(f.stat().st_size for f in path.iterdir() if f.is_file()),
        scalings={module: module_scaling(config, module, rank) for module, rank in ranks.items()},
    )


def _check_files(path: Path) -> None:
    pickles = sorted(str(f.relative_to(path)) for f in path.rglob("*") if f.suffix.lower() in PICKLE_SUFFIXES)
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
    """A small JSON object: bounded in size and nesting, strict JSON (no NaN or Infinity)."""
    if path.stat().st_size > MAX_JSON_BYTES:
        raise InvalidAdapter(f"{path.name} is over {MAX_JSON_BYTES} bytes; an adapter's JSON files are a few KB")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise InvalidAdapter(f"{path.name} is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidAdapter(f"{path.name} is nested too deeply (at most {MAX_JSON_DEPTH} levels)") from None
    if not isinstance(data, dict):
        raise InvalidAdapter(f"{path.name} must hold a JSON object")
    if _depth(data) > MAX_JSON_DEPTH:
        raise InvalidAdapter(f"{path.name} is nested too deeply (at most {MAX_JSON_DEPTH} levels)")
    return data


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number; write a finite number")


def _depth(value: object) -> int:
    """How deeply lists and objects nest in a parsed JSON value (iteratively: no recursion limit)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            pending += [(child, depth + 1) for child in (item.values() if isinstance(item, dict) else item)]
    return deepest


def read_manifest(path: Path) -> Manifest:
    data = _read_json(path)
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()
        )
        raise InvalidAdapter(f"{MANIFEST_FILE} does not match the manifest schema: {problems}") from None


def create(
    path: Path,
    manifest: Manifest,
    lora: LoraSpec,
    weights: Mapping[str, torch.Tensor],
    base: BaseModelInfo,
    limits: AdapterLimits = AdapterLimits(),
) -> ValidatedAdapter:
    """Write an adapter directory (the three files) and validate it against `base`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(json.dumps(lora.peft_config(), indent=2) + "\n", encoding="utf-8")
    save_file({key: t.detach().contiguous().cpu() for key, t in weights.items()}, str(path / WEIGHTS_FILE))
    (path / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return validate(path, base, limits)
