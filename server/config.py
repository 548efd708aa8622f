"""The one settings object: built once from flags and `QADAPTER_*` variables, then passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from adapters.format import DEFAULT_MAX_RANK

EMBEDDED_MODEL = "smollm2-135m-instruct"


class Settings(BaseSettings):
    """Server and CLI configuration; every field can be set as QADAPTER_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="QADAPTER_", extra="forbid")

    home: Path = Field(
        default=Path.home() / ".cache" / "qadapter",
        description="Cache directory: converted models live under home/models.",
    )
    model: str = Field(
        default=EMBEDDED_MODEL,
        description="Base model: a local HF directory, a .gguf file, a hub id or the embedded name.",
    )
    device: str = Field(default="auto", description="auto (CUDA if present, else CPU), cpu, cuda, cuda:N.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="auto: bfloat16 on CUDA, float32 on CPU."
    )
    max_lora_rank: int = Field(default=DEFAULT_MAX_RANK, gt=0, description="Largest LoRA rank accepted.")
    max_running: int = Field(default=32, gt=0, description="Requests decoded together in one step.")
    max_waiting: int = Field(default=256, ge=0, description="Queued requests before new ones get 503.")
    max_prefill_tokens: int = Field(default=4096, gt=0, description="Prompt tokens prefilled per step.")
    max_context: int = Field(default=0, ge=0, description="Prompt + max_tokens limit; 0 = the model's own.")
