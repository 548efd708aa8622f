"""What the engine reports of itself: the figures the metrics layer and the benchmarks read."""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

from qadapter.adapters.identity import name_of

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)


@dataclass
class Timings:
    """A histogram of durations that can travel (to the ingress of a cluster) as plain numbers."""

    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))  # the last: +Inf
    total_s: float = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total_s += seconds


@dataclass(frozen=True)
class EngineStats:
    """Counters the metrics layer reads."""

    process: str  # host:pid of the process the engine runs in (which replica is which process)
    num_running: int
    num_waiting: int
    num_batch_rows: int
    num_generated_tokens: int
    last_step_s: float
    running_per_adapter: dict[str | None, int]
    waiting_per_adapter: dict[str | None, int]
    num_adapters: int  # served (registered) adapters
    num_resident: int  # adapter versions in device memory
    resident_adapters: tuple[str, ...]  # the keys (AdapterId.key) of the current versions among them
    max_resident: int
    num_loads: int
    num_evictions: int
    lora_bytes: int  # memory of the LoRA slot pool
    load_times: Timings  # of adapter loads, from the read's start to the slot
    step_s_total: float  # time in steps that ran a forward, and in the forwards themselves
    forward_s_total: float


def by_adapter_name(per_key: dict[str | None, int]) -> dict[str | None, int]:
    """Counts per adapter key (AdapterId.key; None: the base model) summed per adapter name."""
    summed: dict[str | None, int] = {}
    for key, count in per_key.items():
        name = None if key is None else name_of(key)
        summed[name] = summed.get(name, 0) + count
    return summed
