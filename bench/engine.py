"""Engine throughput and latency against the paper's approach, in one process, on the embedded model.

    python bench/engine.py --json                # the full workload (a few minutes on 2 CPU cores)
    python bench/engine.py --json --quick        # a smoke run
    python bench/engine.py --json --device cuda  # on a GPU (bf16 unless --dtype says otherwise)

Baseline (`naive_tps`): the Q-Adapter paper's public code decodes one request at a time with two
forwards per token (adapter on, adapter off), each with its own KV cache. Every figure uses the
same ~100-token prompts and greedy decoding of exactly `max_tokens` tokens (EOS ignored); each
figure follows an untimed warm-up of the same shape. `top_quarter_*`: an adapter whose LoRA is on
the top quarter of the layers, which shares the other three with its base row (core/shared_rows.py),
and the same with sharing off (`top_quarter_unshared_tps_c8`).
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
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from qadapter.adapters.format import LoraSpec, ValidatedAdapter
from qadapter.core.chat import user_prompt_ids
from qadapter.core.cli_options import add_model_options, settings_from
from qadapter.core.lora import AdapterHost
from qadapter.core.model import LoadedModel, load_base_model
from qadapter.core.policy import customised_logits
from qadapter.server.engine.engine import Engine
from qadapter.server.engine.registry import LoadAdapter
from qadapter.server.engine.request import GenerationRequest, SamplingParams
from qadapter.testing.synthetic_adapters import random_adapter

TOPICS = ["the ocean", "mountains", "city life", "gardening", "astronomy", "cooking", "music", "history"]
WARMUP_TOKENS = 4  # per untimed warm-up request
FILLER = (
    " Please answer in detail, with examples, and explain the reasons behind each point you make so"
    " that a curious reader who knows little about the subject can follow along easily."
)


@dataclass
class Workload:
    max_tokens: int
    num_naive: int
    num_arrivals: int
    prompt_tokens: int = 100


@dataclass
class RunResult:
    tps: float
    ttfts_s: list[float]
    itls_s: list[float]


def make_prompts(loaded: LoadedModel, count: int, num_tokens: int) -> list[tuple[int, ...]]:
    """`count` distinct chat prompts of exactly `num_tokens` tokens."""
    prompts = []
    for i in range(count):
        text = f"Tell me about {TOPICS[i % len(TOPICS)]} (request {i})." + FILLER * 6
        prompts.append(tuple(user_prompt_ids(loaded.tokenizer, text)[-num_tokens:]))
    return prompts


def make_adapters(loaded: LoadedModel, root: Path, count: int, lora: LoraSpec = LoraSpec()) -> list[ValidatedAdapter]:
    """Random LoRA adapters of the paper's shape, or `lora`'s (weights do not change speed)."""
    prefix = "bench" if lora == LoraSpec() else "bench-top"
    return [
        random_adapter(root / f"{prefix}-{i}", loaded.info, f"{prefix}-{i}", b_std=0.02, lora=lora, seed=i)
        for i in range(count)
    ]


def naive_tps(host: AdapterHost, adapter: str, prompts: list[tuple[int, ...]], max_tokens: int) -> float:
    """One request at a time; per token one forward with the adapter and one without, two caches."""
    start = time.perf_counter()
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([prompt], device=host.device)
            q_cache = base_cache = None
            for _ in range(max_tokens):
                q_logits, q_cache = host.forward(ids, q_cache, [adapter])
                base_logits, base_cache = host.forward(ids, base_cache, [None])
                token = customised_logits(q_logits, base_logits).argmax(-1)
                ids = token.view(1, 1)
    if host.device.type == "cuda":
        torch.cuda.synchronize()  # the loop only queues the last tokens' kernels
    return len(prompts) * max_tokens / (time.perf_counter() - start)


async def timed_request(
    engine: Engine, rid: str, prompt: tuple[int, ...], adapter: str | None, params: SamplingParams, delay_s: float = 0.0
) -> tuple[float, list[float], int]:
    """(time to first token, gaps between tokens, tokens) of one request sent after `delay_s`."""
    await asyncio.sleep(delay_s)
    sent = time.perf_counter()
    stamps, num_tokens = [], 0
    async for event in engine.submit(GenerationRequest(rid, prompt, adapter, params)):
        stamps.append(time.perf_counter())
        num_tokens += len(event.token_ids)
    return stamps[0] - sent, [b - a for a, b in zip(stamps, stamps[1:])], num_tokens


async def engine_run(
    engine: Engine,
    prompts: list[tuple[int, ...]],
    adapters: list[str | None],
    max_tokens: int,
    arrivals_per_s: float | None = None,
) -> RunResult:
    """Request i uses adapters[i % len(adapters)]; all at once, or arriving as a Poisson process."""
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    gaps = random.Random(0)
    delays, at = [], 0.0
    for _ in prompts:
        delays.append(at)
        at += gaps.expovariate(arrivals_per_s) if arrivals_per_s else 0.0
    start = time.perf_counter()
    results = await asyncio.gather(
        *(
            timed_request(engine, f"r{i}-{start}", p, adapters[i % len(adapters)], params, delays[i])
            for i, p in enumerate(prompts)
        )
    )
    elapsed = time.perf_counter() - start
    assert all(n == max_tokens for _, _, n in results), "every request must produce max_tokens tokens"
    return RunResult(
        tps=sum(n for _, _, n in results) / elapsed,
        ttfts_s=[t for t, _, _ in results],
        itls_s=[gap for _, gaps, _ in results for gap in gaps],
    )


def arrivals(
    engine: Engine,
    prompts: list[tuple[int, ...]],
    adapters: list[str | None],
    work: Workload,
    tps_c32: float,
    rate: float | None,
) -> dict[str, float]:
    """Requests arriving at `rate` per second, by default one that keeps about 24 running (Little's law
    with the step time at c32): tokens/s, ITL p95, and the share of step time outside the forwards."""
    step_s = 32 / tps_c32  # one token per running request per step
    rate = rate or 24 / (work.max_tokens * step_s)
    before = engine.stats()
    result = asyncio.run(engine_run(engine, prompts, adapters, work.max_tokens, arrivals_per_s=rate))
    after = engine.stats()
    stepped = after.step_s_total - before.step_s_total
    return {
        "arrivals_tps": round(result.tps, 2),
        "arrivals_itl_p95_ms": percentile_ms(result.itls_s, 95),
        "arrivals_per_s": round(rate, 2),
        "arrivals_outside_forward_share": round(1 - (after.forward_s_total - before.forward_s_total) / stepped, 3),
    }


def percentile_ms(values: list[float], q: int) -> float:
    return round(1000 * statistics.quantiles(values, n=100, method="inclusive")[q - 1], 1)


def report_of(figures: dict[str, float], c8: RunResult, work: Workload) -> dict[str, float | int]:
    """The figures, c8's latencies and the ratios that compare them."""
    return {key: round(value, 2) for key, value in figures.items()} | {
        "ttft_p50_ms": percentile_ms(c8.ttfts_s, 50),
        "ttft_p95_ms": percentile_ms(c8.ttfts_s, 95),
        "itl_p50_ms": percentile_ms(c8.itls_s, 50),
        "itl_p95_ms": percentile_ms(c8.itls_s, 95),
        "c8_over_naive": round(figures["engine_tps_c8"] / figures["naive_tps"], 2),
        "c32_over_naive": round(figures["engine_tps_c32"] / figures["naive_tps"], 2),
        "c1_over_base_c1": round(figures["engine_tps_c1"] / figures["base_tps_c1"], 2),
        "top_quarter_c1_over_base_c1": round(figures["top_quarter_tps_c1"] / figures["base_tps_c1"], 2),
        "top_quarter_c8_over_base_c8": round(figures["top_quarter_tps_c8"] / figures["base_tps_c8"], 2),
        "shared_over_unshared_c8": round(figures["top_quarter_tps_c8"] / figures["top_quarter_unshared_tps_c8"], 2),
        "distinct_over_same_c8": round(figures["distinct_adapters_tps_c8"] / figures["same_adapter_tps_c8"], 2),
        "max_tokens": work.max_tokens,
        "prompt_tokens": work.prompt_tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    parser.add_argument("--quick", action="store_true", help="shrink the workload for a smoke run")
    parser.add_argument("--arrivals-per-s", type=float, help="the arrivals workload's rate (default: ~24 running)")
    add_model_options(parser)
    parser.set_defaults(max_running=64)  # every request of the largest run decodes at once
    args = parser.parse_args()
    work = Workload(8, num_naive=2, num_arrivals=8) if args.quick else Workload(64, num_naive=8, num_arrivals=64)
    settings = settings_from(args)
    loaded = load_base_model(settings)
    prompts = make_prompts(loaded, 32, work.prompt_tokens)
    host = AdapterHost(loaded.model, settings.max_resident_adapters + 1)
    engine = Engine(loaded, host, settings)
    engine.start()
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as root:
        num_layers = loaded.model.config.num_hidden_layers
        top = make_adapters(loaded, Path(root), 1, LoraSpec().on_top(num_layers // 4, num_layers))[0]
        adapters = [*make_adapters(loaded, Path(root), 8), top]
        for adapter in adapters:
            engine.adapters.apply(LoadAdapter(adapter)).result()
        names: list[str | None] = [adapter.name for adapter in adapters[:-1]]
        asyncio.run(engine_run(engine, list(prompts[:8]), names, 1))  # every adapter resident; the engine idles

        def run(num: int, adapters: list[str | None]) -> RunResult:
            # A short untimed run first: on CUDA the first batch of a new shape pays for kernel selection.
            asyncio.run(engine_run(engine, list(prompts[:num]), adapters, WARMUP_TOKENS))
            return asyncio.run(engine_run(engine, list(prompts[:num]), adapters, work.max_tokens))

        four = names[:4]
        figures["engine_tps_c1"] = run(1, four).tps
        c8 = run(8, four)
        figures["engine_tps_c8"] = c8.tps
        figures["engine_tps_c32"] = run(32, four).tps
        figures["base_tps_c1"] = run(1, [None]).tps
        figures["base_tps_c8"] = run(8, [None]).tps
        figures["top_quarter_tps_c1"] = run(1, [top.name]).tps  # its LoRA on the top quarter of the layers
        figures["top_quarter_tps_c8"] = run(8, [top.name]).tps
        host.share_lower_layers = False  # the A/B: its rows run every layer, as any adapter's
        figures["top_quarter_unshared_tps_c8"] = run(8, [top.name]).tps
        host.share_lower_layers = True
        figures["same_adapter_tps_c8"] = run(8, [names[0]]).tps
        figures["distinct_adapters_tps_c8"] = run(8, names).tps
        many = make_prompts(loaded, work.num_arrivals, work.prompt_tokens)
        figures |= arrivals(engine, many, four, work, figures["engine_tps_c32"], args.arrivals_per_s)
        # The baseline last, driving the same model and weights from this thread while the engine idles:
        # run first, its OpenMP threads then contended with the engine thread's for the cores and
        # slowed the adapter steps that followed (c1 ITL 192 ms against 82).
        naive_key = engine.adapters.resolve(adapters[0].name).key
        naive_tps(host, naive_key, list(prompts[:1]), WARMUP_TOKENS)
        figures["naive_tps"] = naive_tps(host, naive_key, list(prompts[: work.num_naive]), work.max_tokens)
    engine.shutdown()
    report = report_of(figures, c8, work) | {"quick": args.quick, **loaded.placement}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
