"""Cluster mode against one process, on the embedded model, in one run.

    python bench/cluster.py --json [--quick]

Both servers are real `qadapter serve` processes over one store of 16 adapters, given the same CPU
cores: the baseline is a single process (torch on every core), ours `--replicas R` engine replicas of
`--replica-cpus 1` each on a local Ray. Figures:
- `*_tps`: completion tokens per second of a mixed-adapter workload (16 clients, each request on the
  next adapter in turn, 32 tokens each, EOS ignored) and `cluster_vs_single_tps`, their ratio;
- `*_ttft_ms_p50` at concurrency 1 (streaming, first content chunk) and `ttft_overhead_ms_p50`, the
  hop through the ingress and Ray Serve;
- `loads_per_adapter`: adapter loads summed over every replica per adapter served; 1.0 means
  affinity routing kept each adapter on one replica.
On a machine with few cores the replicas share what the single process had, so the throughput ratio
shows the overhead of splitting, not a gain; the gain is in machines added (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx

from qadapter.core.model import load_base_model
from qadapter.core.settings import Settings
from qadapter.testing.server_process import ServerProcess
from qadapter.testing.synthetic_adapters import random_adapter

NUM_ADAPTERS = 16
NUM_CLIENTS = 16
MAX_TOKENS = 32
QUESTION = [{"role": "user", "content": "Tell me a long story about the sea, with many details."}]


def mixed_tps(url: str, requests_per_client: int) -> float:
    """Completion tokens per second, NUM_CLIENTS clients each going round the adapters."""
    tokens: list[int] = []
    failures: list[str] = []

    def client(offset: int) -> None:
        with httpx.Client(base_url=url, timeout=600) as http:
            for i in range(requests_per_client):
                body = {"model": f"a{(offset + i) % NUM_ADAPTERS}", "messages": QUESTION, "max_tokens": MAX_TOKENS}
                response = http.post("/v1/chat/completions", json={**body, "ignore_eos": True})
                if response.status_code != 200:
                    failures.append(response.text)
                    continue
                tokens.append(response.json()["usage"]["completion_tokens"])

    threads = [threading.Thread(target=client, args=(c,)) for c in range(NUM_CLIENTS)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, e.g. {failures[0]}")
    return sum(tokens) / elapsed


def ttft_ms_p50(url: str, count: int) -> float:
    """Time to the first content chunk of a streamed request, one at a time."""
    ttfts = []
    for i in range(count):
        body = {"model": f"a{i % NUM_ADAPTERS}", "messages": QUESTION, "max_tokens": 4, "stream": True}
        start = time.perf_counter()
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as response:
            lines = response.iter_lines()
            for line in lines:
                if line.startswith("data: {") and '"content": "' in line:
                    ttfts.append(1000 * (time.perf_counter() - start))
                    break
            for _ in lines:  # let it finish before the next one
                pass
    return statistics.median(ttfts)


def measure(store: Path, log: Path, requests_per_client: int, *flags: str) -> dict[str, float]:
    server = ServerProcess(store, log, *flags)
    try:
        mixed_tps(server.url, 1)  # untimed warm-up: every adapter loaded, every shape seen
        loads_before = server.metric("qadapter_adapter_loads_total")
        figures = {
            "tps": mixed_tps(server.url, requests_per_client),
            "ttft_ms_p50": ttft_ms_p50(server.url, 8),
            "loads_per_adapter": server.metric("qadapter_adapter_loads_total") / NUM_ADAPTERS,
            "loads_after_warmup": server.metric("qadapter_adapter_loads_total") - loads_before,
        }
    finally:
        server.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    parser.add_argument("--quick", action="store_true", help="shrink the workload for a smoke run")
    parser.add_argument("--replicas", type=int, default=2, help="engine replicas of the cluster (1 CPU each)")
    args = parser.parse_args()
    requests_per_client = 1 if args.quick else 4
    with tempfile.TemporaryDirectory() as root:
        store = Path(root) / "store"
        info = load_base_model(Settings(), weights=False).info  # the model QADAPTER_* names, as the servers
        for i in range(NUM_ADAPTERS):
            random_adapter(store / f"a{i}", info, f"a{i}", b_std=0.02, seed=i)
        single = measure(store, Path(root) / "single.log", requests_per_client)
        cluster_flags = ("--replicas", str(args.replicas), "--replica-cpus", "1")
        cluster = measure(store, Path(root) / "cluster.log", requests_per_client, *cluster_flags)
    report = {
        "single_tps": round(single["tps"], 2),
        "cluster_tps": round(cluster["tps"], 2),
        "cluster_vs_single_tps": round(cluster["tps"] / single["tps"], 2),
        "single_ttft_ms_p50": round(single["ttft_ms_p50"], 1),
        "cluster_ttft_ms_p50": round(cluster["ttft_ms_p50"], 1),
        "ttft_overhead_ms_p50": round(cluster["ttft_ms_p50"] - single["ttft_ms_p50"], 1),
        "loads_per_adapter": round(cluster["loads_per_adapter"], 2),
        "single_loads_per_adapter": round(single["loads_per_adapter"], 2),
        "cluster_loads_after_warmup": cluster["loads_after_warmup"],
        "replicas": args.replicas,
        "cpus": os.cpu_count(),
        "quick": args.quick,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
