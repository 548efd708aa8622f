"""Prometheus metrics: one registry per app (no module-level state), engine gauges read at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from qadapter.server.engine.stats import EngineStats

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)


class _EngineCollector(Collector):
    def __init__(self, stats: Callable[[], EngineStats], base_id: str) -> None:
        self._stats = stats
        self._base_id = base_id

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        yield GaugeMetricFamily("qadapter_requests_running", "Requests decoding now.", value=stats.num_running)
        yield GaugeMetricFamily("qadapter_requests_waiting", "Requests queued for admission.", value=stats.num_waiting)
        yield GaugeMetricFamily("qadapter_batch_rows", "Rows in the last decode batch.", value=stats.num_batch_rows)
        yield GaugeMetricFamily("qadapter_adapters_loaded", "Adapters served.", value=stats.num_adapters)
        yield GaugeMetricFamily(
            "qadapter_adapters_resident", "Adapter versions in device memory.", value=stats.num_resident
        )
        yield CounterMetricFamily("qadapter_adapter_loads", "Adapter loads into device memory.", value=stats.num_loads)
        yield CounterMetricFamily(
            "qadapter_adapter_evictions", "Adapters evicted to make room.", value=stats.num_evictions
        )
        yield GaugeMetricFamily("qadapter_adapter_bytes", "Memory the LoRA slot pool holds.", value=stats.lora_bytes)
        per_adapter = GaugeMetricFamily(
            "qadapter_adapter_requests_running", "Running requests per adapter.", labels=["adapter"]
        )
        for adapter, count in stats.running_per_adapter.items():
            per_adapter.add_metric([adapter or self._base_id], count)
        yield per_adapter


class Metrics:
    """The collectors the HTTP layer updates; `registry` is what /metrics renders."""

    def __init__(self, stats: Callable[[], EngineStats], base_id: str) -> None:
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
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inter_token = Histogram(
            "qadapter_inter_token_latency_seconds",
            "Time between tokens of a stream.",
            ["adapter"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.e2e = Histogram(
            "qadapter_e2e_request_latency_seconds",
            "Request latency, first byte in to last out.",
            ["adapter"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.adapter_load = Histogram(
            "qadapter_adapter_load_seconds",
            "Time to load an adapter into device memory.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(stats, base_id))
