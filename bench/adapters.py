"""Many adapters: 128 in the store, 32 resident, 32 concurrent streams on adapters drawn Zipf(1.0).

    python bench/adapters.py --json [--quick] [--device cuda]

- `many_vs_one_tps`: tokens/s of the Zipf workload against the same workload on one adapter;
- `load_ms_p50/p95`: a cold adapter's load, from the start of its read to its slot;
- `max_load_blocking_ms`: the longest a load held the engine thread (its copy into a slot; the read
  runs on the loader thread), which is what a load adds to a running stream's step;
- `load_cost_growth`: the time of one load with 64 adapters resident over the time with 8 (the slot
  pool writes one slot in place, so it should stay flat).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from engine import engine_run, make_prompts, percentile_ms  # bench/engine.py, beside this script

from qadapter.adapters.format import ValidatedAdapter
from qadapter.core.cli_options import add_model_options, settings_from
from qadapter.core.lora import AdapterHost
from qadapter.core.model import LoadedModel, load_base_model
from qadapter.server.engine.engine import Engine
from qadapter.server.engine.registry import LoadAdapter
from qadapter.testing.synthetic_adapters import random_adapter

NUM_ADAPTERS, NUM_RESIDENT, NUM_STREAMS = 128, 32, 32


def zipf_draws(count: int, num_adapters: int, seed: int) -> list[int]:
    """Adapter indices drawn with P(k) ∝ 1/(k+1)."""
    weights = [1 / (k + 1) for k in range(num_adapters)]
    return random.Random(seed).choices(range(num_adapters), weights=weights, k=count)


def workload_tps(
    engine: Engine, prompts: list[tuple[int, ...]], names: list[str | None], waves: int, max_tokens: int, draw: bool
) -> float:
    """Tokens/s over `waves` rounds of NUM_STREAMS concurrent requests (Zipf-drawn adapters, or names[0])."""
    elapsed = 0.0
    for wave in range(waves):
        chosen = [names[k] for k in zipf_draws(NUM_STREAMS, len(names), seed=wave)] if draw else [names[0]]
        start = time.perf_counter()
        asyncio.run(engine_run(engine, prompts, chosen, max_tokens))  # every request makes max_tokens tokens
        elapsed += time.perf_counter() - start
    return waves * len(prompts) * max_tokens / elapsed


def load_seconds(loaded: LoadedModel, adapters: list[ValidatedAdapter], resident: int, tries: int) -> float:
    """Median time of one host load with `resident` adapters already in the pool."""
    host = AdapterHost(loaded.model)
    for adapter in adapters[:resident]:
        host.load(adapter.name, adapter.read_weights())
    times = []
    for adapter in adapters[resident : resident + tries]:
        weights = adapter.read_weights()  # the read is the loader thread's; the engine thread does this:
        start = time.perf_counter()
        host.load(adapter.name, weights)
        times.append(time.perf_counter() - start)
        host.unload(adapter.name)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    parser.add_argument("--quick", action="store_true", help="shrink the workload for a smoke run")
    add_model_options(parser)
    args = parser.parse_args()
    args.max_resident_adapters, args.max_running = NUM_RESIDENT, 2 * NUM_STREAMS
    waves, max_tokens = (1, 4) if args.quick else (4, 32)
    settings = settings_from(args)
    loaded = load_base_model(settings)
    prompts = make_prompts(loaded, NUM_STREAMS, 100)
    engine = Engine(loaded, AdapterHost(loaded.model, settings.max_resident_adapters + 1), settings)
    load_s: list[float] = []
    engine.adapters.residency.on_load = load_s.append
    engine.start()
    with tempfile.TemporaryDirectory() as root:
        adapters = [
            random_adapter(Path(root) / f"a{i}", loaded.info, f"a{i}", b_std=0.02, seed=i) for i in range(NUM_ADAPTERS)
        ]
        for adapter in adapters:
            engine.adapters.apply(LoadAdapter(adapter)).result()
        names: list[str | None] = [a.name for a in adapters]
        asyncio.run(engine_run(engine, prompts[:4], names[:4], 2))  # untimed warm-up of the shapes
        one = workload_tps(engine, prompts, names, waves, max_tokens, draw=False)
        many = workload_tps(engine, prompts, names, waves, max_tokens, draw=True)
        blocking = engine.adapters.residency.max_install_s
        engine.shutdown()
        growth = {n: load_seconds(load_base_model(settings), adapters, n, tries=5) for n in (8, 64)}
    report = {
        "one_adapter_tps": round(one, 2),
        "many_adapters_tps": round(many, 2),
        "many_vs_one_tps": round(many / one, 2),
        "loads": len(load_s),
        "load_ms_p50": percentile_ms(load_s, 50) if len(load_s) > 1 else None,
        "load_ms_p95": percentile_ms(load_s, 95) if len(load_s) > 1 else None,
        "max_load_blocking_ms": round(1000 * blocking, 1),
        "load_ms_at_8_resident": round(1000 * growth[8], 2),
        "load_ms_at_64_resident": round(1000 * growth[64], 2),
        "load_cost_growth": round(growth[64] / growth[8], 2),
        "quick": args.quick,
        **loaded.placement,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
