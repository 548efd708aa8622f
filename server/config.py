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
    max_resident_adapters: int = Field(default=64, gt=0, description="Adapter versions kept in device memory.")
    max_lora_rank: int = Field(default=DEFAULT_MAX_RANK, gt=0, description="Largest LoRA rank accepted.")
    max_running: int = Field(default=32, gt=0, description="Requests decoded together in one step.")
    max_waiting: int = Field(default=256, ge=1, description="Queued requests before new ones get 503.")
    max_prefill_tokens: int = Field(default=4096, gt=0, description="Prompt tokens prefilled per step.")
    max_context: int = Field(default=0, ge=0, description="Prompt + max_tokens limit; 0 = the model's own.")
    default_max_tokens: int = Field(default=512, gt=0, description="max_tokens when a request sets none.")
    host: str = Field(default="127.0.0.1", description="Address `qadapter serve` listens on.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port `qadapter serve` listens on.")
    adapters_dir: Path = Field(default=Path("adapters-store"), description="Adapters loaded at start.")
    install_adapters: Path | None = Field(
        default=None, description="At start, adapters under this directory that the store lacks are copied in."
    )
    api_keys: str = Field(default="", description="Comma-separated keys for /v1/*; empty = no auth.")
    admin_key: str = Field(default="", description="Key for /admin/*; empty = admin routes are off.")
    max_upload_bytes: int = Field(default=256 * 2**20, gt=0, description="Largest adapter upload accepted.")
    metrics_need_key: bool = Field(default=False, description="Require an API key for /metrics too.")
    shutdown_timeout_s: float = Field(default=30.0, ge=0, description="Grace for running requests on SIGTERM.")

    @property
    def api_key_list(self) -> list[str]:
        return [key.strip() for key in self.api_keys.split(",") if key.strip()]
