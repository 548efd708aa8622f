"""The one settings object: built once from flags and `QADAPTER_*` variables, then passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

EMBEDDED_MODEL = "smollm2-135m-instruct"
DEFAULT_MAX_RANK = 64
# 500× the largest weight of the shipped adapters (0.19), 40× that of the random test adapters
DEFAULT_MAX_LORA_WEIGHT = 100.0


class Settings(BaseSettings):
    """Server and CLI configuration; every field is a flag (`--max-running`) and a `QADAPTER_<FIELD>` variable.

    The one source of defaults: `qadapter serve` flags, the engine's limits and docs/configuration.md
    are all made from these fields.
    """

    model_config = SettingsConfigDict(env_prefix="QADAPTER_", extra="forbid")

    home: Path = Field(default=Path.home() / ".cache" / "qadapter", description="Cache of converted models.")
    model: str = Field(
        default=EMBEDDED_MODEL,
        description="Base model: a local Hugging Face directory, a .gguf file, a hub id, or the embedded model.",
    )
    device: str = Field(default="auto", description="auto (CUDA if present, else CPU), cpu, cuda or cuda:N.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Weights' dtype; auto is bfloat16 on CUDA, float32 on CPU."
    )
    adapters_dir: Path = Field(default=Path("adapters-store"), description="The adapter store, served from the start.")
    install_adapters: Path | None = Field(
        default=None,
        description="At start, copy into the store every adapter directory under this one whose name it lacks "
        "(so an example deleted through the admin API returns at the next start).",
    )
    host: str = Field(default="127.0.0.1", description="Address `qadapter serve` listens on.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port `qadapter serve` listens on.")
    api_keys: str = Field(default="", description="Comma-separated keys required on /v1/*; empty: /v1/* is open.")
    admin_key: str = Field(default="", description="Key for /admin/*; empty: the admin routes are off.")
    max_upload_bytes: int = Field(default=256 * 2**20, gt=0, description="Largest adapter upload accepted.")
    max_request_bytes: int = Field(
        default=4 * 2**20, gt=0, description="Largest /v1 request body accepted (413 past it, before any parsing)."
    )
    read_timeout_s: float = Field(
        default=60.0, gt=0, description="Seconds a client gets to send a request's headers, and again its body (408)."
    )
    max_resident_adapters: int = Field(default=64, gt=0, description="Adapter versions in device memory (LRU).")
    max_lora_rank: int = Field(default=DEFAULT_MAX_RANK, gt=0, description="Largest LoRA rank accepted.")
    max_lora_weight: float = Field(
        default=DEFAULT_MAX_LORA_WEIGHT,
        gt=0,
        description="Largest LoRA weight magnitude accepted: no trained LoRA has weights near it; huge ones "
        "only drive the served scores to inf.",
    )
    max_running: int = Field(default=32, gt=0, description="Requests decoded together in one step.")
    share_lower_layers: bool = Field(
        default=True,
        description="Run a Q-adapter request's adapter row and base row as one row in the layers below the "
        "adapter's lowest adapted layer (the same output; an adapter on the top layers costs one row there).",
    )
    max_waiting: int = Field(default=256, ge=1, description="Queued requests before new ones get 503.")
    max_prefill_tokens: int = Field(
        default=4096, gt=0, description="Prompt tokens (summed over batch rows) of the requests admitted together."
    )
    prefill_chunk_tokens: int = Field(
        default=2048,
        gt=0,
        description="Prompt token-rows run per step (and a quarter of that in columns): what a joining prompt "
        "may delay the others by.",
    )
    grammar_timeout_s: float = Field(
        default=3.0,
        gt=0,
        description="Seconds a request's grammar may take to compile in the grammar check (400 past it); the "
        "engine compiles each new grammar once, so this also bounds how long one can hold its step.",
    )
    max_context: int = Field(default=0, ge=0, description="Limit on prompt + max_tokens; 0: the model's own.")
    default_max_tokens: int = Field(
        default=512, gt=0, description="max_tokens of a request that sets none (capped by what the context leaves)."
    )
    replicas: int = Field(
        default=0,
        ge=0,
        description="Engine replicas on Ray Serve (cluster mode, needs the `cluster` extra); 0: one engine in "
        "this process.",
    )
    ray_address: str = Field(
        default="",
        description="A Ray cluster to join in cluster mode (`auto`: the one `ray start` began on this machine); empty: start a local one.",
    )
    replica_cpus: float = Field(default=1.0, gt=0, description="CPUs each engine replica reserves (its torch threads).")
    replica_gpus: float = Field(default=0.0, ge=0, description="GPUs each engine replica reserves.")
    metrics_need_key: bool = Field(default=False, description="Require an API key on /metrics too.")
    shutdown_timeout_s: float = Field(
        default=30.0, ge=0, description="Seconds running requests get to finish after SIGTERM."
    )

    @property
    def api_key_list(self) -> list[str]:
        return [key.strip() for key in self.api_keys.split(",") if key.strip()]
