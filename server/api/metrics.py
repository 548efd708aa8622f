"""Prometheus metrics: one registry per app (no module-level state), engine gauges read at scrape time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from itertools import accumulate

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from qadapter.server.engine.stats import LATENCY_BUCKETS, EngineStats, by_adapter_name


class _EngineCollector(Collector):
    """Each engine's figures, read at scrape time and labelled by replica; vLLM's names beside ours,
    so that LoRA-aware routers (llm-d, the Gateway API Inference Extension) can read them unchanged."""

    def __init__(
        self, replica_stats: Callable[[], dict[str, EngineStats]], num_served: Callable[[], int], base_id: str
    ) -> None:
        self._replica_stats = replica_stats
        self._num_served = num_served
        self._base_id = base_id

    def collect(self) -> Iterator[Metric]:
        by_replica = self._replica_stats()
        yield GaugeMetricFamily("qadapter_adapters_loaded", "Adapters served.", value=self._num_served())
        for name, kind, doc, value in _PER_REPLICA:
            family = kind(name, doc, labels=["replica"])
            for replica, stats in by_replica.items():
                family.add_metric([replica], value(stats))
            yield family
        info = GaugeMetricFamily(
            "qadapter_replica_info", "Each engine replica, and its process (host:pid).", labels=["replica", "process"]
        )
        for replica, stats in by_replica.items():
            info.add_metric([replica, stats.process], 1)
        yield info
        yield self._load_times(by_replica)
        yield from self._per_adapter(by_replica)

    def _load_times(self, by_replica: dict[str, EngineStats]) -> Metric:
        family = HistogramMetricFamily(
            "qadapter_adapter_load_seconds", "Adapter loads, from the read's start to the slot.", labels=["replica"]
        )
        for replica, stats in by_replica.items():
            counts = list(accumulate(stats.load_times.buckets))
            bounds = [*map(str, LATENCY_BUCKETS), "+Inf"]
            family.add_metric([replica], list(zip(bounds, counts)), sum_value=stats.load_times.total_s)
        return family

    def _per_adapter(self, by_replica: dict[str, EngineStats]) -> Iterator[Metric]:
        running = GaugeMetricFamily(
            "qadapter_adapter_requests_running", "Running requests per adapter.", labels=["adapter", "replica"]
        )
        info = GaugeMetricFamily(
            "vllm:lora_requests_info",
            "The adapters of running and waiting requests (vLLM's form; the value is the time of the scrape).",
            labels=["running_lora_adapters", "waiting_lora_adapters", "max_lora", "replica"],
        )
        resident = GaugeMetricFamily(
            "qadapter_adapter_resident_info",
            "The adapters each replica holds in device memory.",
            labels=["adapter", "replica"],
        )
        for replica, stats in by_replica.items():
            for adapter, count in by_adapter_name(stats.running_per_adapter).items():
                running.add_metric([adapter or self._base_id, replica], count)
            names = [_names(stats.running_per_adapter), _names(stats.waiting_per_adapter)]
            info.add_metric([*names, str(stats.max_resident), replica], time.time())
            for adapter in by_adapter_name(dict.fromkeys(stats.resident_adapters, 1)):  # once per name
                resident.add_metric([adapter, replica], 1)
        yield running
        yield info
        yield resident


def _names(per_adapter: dict[str | None, int]) -> str:
    return ",".join(sorted(name for name in by_adapter_name(per_adapter) if name))


_PER_REPLICA: list[tuple[str, type, str, Callable[[EngineStats], float]]] = [
    ("qadapter_requests_running", GaugeMetricFamily, "Requests decoding now.", lambda s: s.num_running),
    ("qadapter_requests_waiting", GaugeMetricFamily, "Requests queued for admission.", lambda s: s.num_waiting),
    ("qadapter_batch_rows", GaugeMetricFamily, "Rows in the last decode batch.", lambda s: s.num_batch_rows),
    ("qadapter_adapters_resident", GaugeMetricFamily, "Adapter versions in device memory.", lambda s: s.num_resident),
    ("qadapter_adapter_loads", CounterMetricFamily, "Adapter loads into device memory.", lambda s: s.num_loads),
    ("qadapter_adapter_evictions", CounterMetricFamily, "Adapters evicted to make room.", lambda s: s.num_evictions),
    ("qadapter_adapter_bytes", GaugeMetricFamily, "Memory the LoRA slot pool holds.", lambda s: s.lora_bytes),
    ("vllm:num_requests_running", GaugeMetricFamily, "Requests decoding now (vLLM's name).", lambda s: s.num_running),
    ("vllm:num_requests_waiting", GaugeMetricFamily, "Requests queued (vLLM's name).", lambda s: s.num_waiting),
]


class Metrics:
    """The collectors the HTTP layer updates; `registry` is what /metrics renders."""

    def __init__(
        self, replica_stats: Callable[[], dict[str, EngineStats]], num_served: Callable[[], int], base_id: str
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "qadapter_requests", "Finished HTTP inference requests.", ["adapter", "status"], registry=self.registry
        )
        self.prompt_tokens = Counter(
            "qadapter_prompt_tokens", "Prompt tokens processed.", ["adapter"], registry=self.registry
        )
        self.generation_tokens = Counter(
            "qadapter_generation_tokens", "Tokens generated.", ["adapter"], registry=self.registry
        )
        self.ttft = Histogram(
            "qadapter_time_to_first_token_seconds",
            "Time to first token.",
            ["adapter"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inter_token = Histogram(
            "qadapter_inter_token_latency_seconds",
            "Time between tokens of a stream.",
            ["adapter"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.e2e = Histogram(
            "qadapter_e2e_request_latency_seconds",
            "Request latency, first byte in to last out.",
            ["adapter"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(replica_stats, num_served, base_id))
