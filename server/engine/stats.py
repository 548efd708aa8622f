"""What the engine reports of itself: the figures the metrics layer and the benchmarks read."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineStats:
    """Counters the metrics layer reads."""

    num_running: int
    num_waiting: int
    num_batch_rows: int
    num_generated_tokens: int
    last_step_s: float
    running_per_adapter: dict[str | None, int]
    num_adapters: int  # served (registered) adapters
    num_resident: int  # adapter versions in device memory
    num_loads: int
    num_evictions: int
    lora_bytes: int  # memory of the LoRA slot pool
    step_s_total: float  # time in steps that ran a forward, and in the forwards themselves
    forward_s_total: float
