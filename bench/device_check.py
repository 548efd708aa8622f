"""The GPU check: one script, under 8 minutes on one GPU, nothing downloaded.

    python bench/device_check.py            # on a GPU: a random Llama-3.2-1B-shaped base in bf16
    python bench/device_check.py --smoke    # on a CPU: tiny shapes, so that CI keeps the script working

1. the CUDA tests (tests/unit/core/test_cuda.py), when pytest is there;
2. bench/engine.py and bench/adapters.py on the synthetic base (weights are random: speed only);
3. the GPU targets: Q-adapter tokens/s at c1 ≥ 0.8 × the base's; c64 over 8 adapters ≥ 0.85 × c64 on
   one; the decode step at c64 within 3 × the time to read the weights and the KV cache once at the
   device's measured copy bandwidth (the bound is printed beside the step).

Prints one JSON object: every figure, and each target with whether it was met.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from engine import engine_run, make_adapters, make_prompts, percentile_ms  # bench/engine.py, beside this script

from qadapter.core.lora import AdapterHost
from qadapter.core.model import LoadedModel, load_base_model
from qadapter.core.settings import Settings
from qadapter.server.engine.engine import Engine
from qadapter.server.engine.registry import LoadAdapter
from qadapter.testing.synthetic_base import LLAMA_1B, TINY, write_synthetic_base

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def run_tests() -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "tests/unit/core/test_cuda.py"], cwd=ROOT, capture_output=True, text=True
    )
    summary = (done.stdout.strip().splitlines() or ["no output"])[-1]
    if "No module named pytest" in done.stderr:
        summary = "pytest is not installed here"
    return {"cuda_tests": tests_outcome(done.returncode, summary), "cuda_tests_summary": summary}


def tests_outcome(returncode: int, summary: str) -> str:
    """passed, failed, or not run: tests that were all skipped (no CUDA here) or never collected
    (pytest's exit 5) showed nothing, and are never counted as passed."""
    if returncode == 5 or (returncode == 0 and not re.search(r"\b[1-9]\d* passed", summary)):
        return "not run"
    return "passed" if returncode == 0 else "failed"


def run_bench(script: str, model: Path, device: str, dtype: str, smoke: bool) -> dict[str, object]:
    args = [sys.executable, str(BENCH / script), "--json", "--model", str(model), "--device", device, "--dtype", dtype]
    done = subprocess.run([*args, *(["--quick"] if smoke else [])], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def copy_bandwidth(device: torch.device) -> float:
    """Bytes per second the device reads and writes in a large copy."""
    source = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    target.copy_(source)  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(5):
        target.copy_(source)
    _sync(device)
    return 5 * 2 * source.numel() / (time.perf_counter() - start)


def c64_figures(loaded: LoadedModel, concurrency: int, max_tokens: int) -> dict[str, float]:
    """c64 over 8 adapters against c64 on one, and the decode step against its memory bound."""
    settings = Settings(device=str(loaded.device), max_running=2 * concurrency)
    engine = Engine(loaded, AdapterHost(loaded.model, settings.max_resident_adapters + 1), settings)
    engine.start()
    prompts = make_prompts(loaded, concurrency, 100)
    with tempfile.TemporaryDirectory() as root:
        adapters = make_adapters(loaded, Path(root), 8)
        for adapter in adapters:
            engine.adapters.apply(LoadAdapter(adapter)).result()
        names: list[str | None] = [a.name for a in adapters]
        asyncio.run(engine_run(engine, prompts, names, 4))  # warm-up: every adapter resident, shapes seen
        mixed = asyncio.run(engine_run(engine, prompts, names, max_tokens))
        one = asyncio.run(engine_run(engine, prompts, names[:1], max_tokens))
    engine.shutdown()
    config = loaded.model.config
    element = next(loaded.model.parameters()).element_size()
    weights = sum(p.numel() for p in loaded.model.parameters()) * element
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * element
    kv = 2 * concurrency * (100 + max_tokens // 2) * per_token  # two rows a request, half-way through
    step_s = percentile_ms(mixed.itls_s, 50) / 1000
    bound_s = (weights + kv) / copy_bandwidth(loaded.device)
    return {
        "mixed_tps": round(mixed.tps, 2),
        "one_adapter_tps": round(one.tps, 2),
        "mixed_over_one": round(mixed.tps / one.tps, 2),
        "decode_step_ms": round(1000 * step_s, 2),
        "decode_step_bound_ms": round(1000 * bound_s, 3),
        "step_over_bound": round(step_s / bound_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (what CI runs)")
    args = parser.parse_args()
    device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    dtype = "float32" if device == "cpu" else "bfloat16"
    started = time.perf_counter()
    report: dict[str, object] = {"device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
    report |= run_tests()
    with tempfile.TemporaryDirectory() as root:
        model = write_synthetic_base(
            Path(root) / "base", TINY if args.smoke else LLAMA_1B, getattr(torch, dtype), device
        )
        report["engine"] = run_bench("engine.py", model, device, dtype, args.smoke)
        report["adapters"] = run_bench("adapters.py", model, device, dtype, args.smoke)
        loaded = load_base_model(Settings(model=str(model), device=device, dtype=dtype))
        concurrency, max_tokens = (4, 4) if args.smoke else (64, 32)
        report[f"c{concurrency}"] = c64_figures(loaded, concurrency, max_tokens)
    engine, c64 = report["engine"], report[f"c{concurrency}"]
    report["targets"] = {
        "c1_over_base_c1 >= 0.8": _met(engine, "c1_over_base_c1", lambda v: v >= 0.8),
        "c64 mixed_over_one >= 0.85": _met(c64, "mixed_over_one", lambda v: v >= 0.85),
        "c64 step_over_bound <= 3": _met(c64, "step_over_bound", lambda v: v <= 3),
    }
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report))


def _met(figures: object, key: str, rule: object) -> dict[str, object]:
    value = figures.get(key) if isinstance(figures, dict) else None
    return {"value": value, "met": bool(value is not None and rule(value))}  # type: ignore[operator]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
