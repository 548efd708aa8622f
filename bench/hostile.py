"""What hostile requests cost everyone else, on the embedded model, in one run.

    python bench/hostile.py --json [--device cuda]

- `/health` latency idle, and while a 600k-character prompt is templated, tokenised and refused
  (it passes the character check; the work runs in a worker thread), and while 4 MiB bodies are
  refused (413);
- `/health` p99 while each hostile request of bench/hostile_cases.py is sent (three times each),
  and while an 8,000-token prompt is scored with echo;
- the longest stall of a running stream while a ~4000-token prompt joins: prefilled whole in one
  step (the baseline: `--prefill-chunk-tokens` large enough) against in 512-token chunks.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
import uvicorn

from qadapter.core.cli_options import add_model_options, settings_from
from qadapter.core.settings import Settings
from qadapter.server.app import create_app
from qadapter.testing.hostile_cases import CASES
from qadapter.testing.server_process import ServerProcess

BASE_BODY = {"model": "smollm2-135m-instruct", "temperature": 0}
HUGE_TEXT = ("The quick brown fox jumps over the lazy dog. " * 14_000)[:600_000]
LONG_PROMPT = "Tell me a story about the sea. " * 570  # ~4000 tokens
KEY = "bench-key"


def serve(settings: Settings) -> tuple[uvicorn.Server, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.1)
    return server, f"http://127.0.0.1:{port}"


def health_ms_while(url: str, work: Callable[[], object] | None, count: int = 40) -> list[float]:
    """/health latencies (ms) while `work` runs in a thread (or `count` of them, idle)."""
    thread = threading.Thread(target=work) if work else None
    if thread:
        thread.start()
    latencies = []
    with httpx.Client(base_url=url, timeout=60) as http:
        while (thread and thread.is_alive()) or (not thread and len(latencies) < count):
            start = time.perf_counter()
            http.get("/health")
            latencies.append(1000 * (time.perf_counter() - start))
            time.sleep(0.01)
    if thread:
        thread.join()
    return latencies


def max_stall_ms_while_a_long_prompt_joins(url: str) -> float:
    """The longest gap between two tokens of a running stream while a long prompt is prefilled."""
    stamps: list[float] = []
    body = {**BASE_BODY, "messages": [{"role": "user", "content": "Count slowly."}], "max_tokens": 400}

    def run() -> None:
        with httpx.stream(
            "POST", f"{url}/v1/chat/completions", json={**body, "stream": True, "ignore_eos": True}, timeout=600
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    stamps.append(time.perf_counter())

    stream = threading.Thread(target=run)
    stream.start()
    while len(stamps) < 5:
        time.sleep(0.01)
    joined = time.perf_counter()
    long = {**BASE_BODY, "messages": [{"role": "user", "content": LONG_PROMPT}], "max_tokens": 1}
    httpx.post(f"{url}/v1/chat/completions", json=long, timeout=600)
    done = time.perf_counter()
    stream.join()
    return 1000 * max(b - a for a, b in zip(stamps, stamps[1:]) if b >= joined and a <= done)


def health_during_hostile_requests(url: str) -> dict[str, object]:
    """/health's p99 over every hostile case (and the longest wait during each), and during a long scored prompt."""
    by_case = {
        case.name: health_ms_while(url, lambda case=case: [case.send(url, KEY) for _ in range(3)]) for case in CASES
    }
    scored = {
        "model": BASE_BODY["model"],
        "prompt": list(range(1000, 9000)),
        "echo": True,
        "logprobs": 1,
        "max_tokens": 1,
    }
    headers = {"Authorization": f"Bearer {KEY}"}
    during_scoring = health_ms_while(
        url, lambda: httpx.post(f"{url}/v1/completions", json=scored, headers=headers, timeout=600)
    )
    every = sorted(ms for latencies in by_case.values() for ms in latencies)
    return {
        "health_p99_ms_during_hostile": round(every[int(0.99 * (len(every) - 1))], 1),
        "health_max_ms_by_hostile_case": {name: round(max(ms), 1) for name, ms in by_case.items()},
        "health_p99_ms_during_long_scored_prompt": round(
            sorted(during_scoring)[int(0.99 * (len(during_scoring) - 1))], 1
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    add_model_options(parser)
    args = parser.parse_args()
    report: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as store:
        args.adapters_dir = Path(store)
        settings = settings_from(args)
        server, url = serve(settings)
        huge_chat = {**BASE_BODY, "messages": [{"role": "user", "content": HUGE_TEXT}]}
        oversized = json.dumps({**BASE_BODY, "prompt": "x" * (settings.max_request_bytes + 1)}).encode()
        idle = health_ms_while(url, None)
        during_huge = health_ms_while(
            url, lambda: httpx.post(f"{url}/v1/chat/completions", json=huge_chat, timeout=120)
        )
        during_413 = health_ms_while(
            url, lambda: [httpx.post(f"{url}/v1/completions", content=oversized, timeout=120) for _ in range(5)]
        )
        report["chunked_max_stall_ms"] = round(max_stall_ms_while_a_long_prompt_joins(url), 1)
        server.should_exit = True
        # in a process of its own: the bodies built here must not hold this process's GIL against it
        model = ("--model", settings.model, "--device", settings.device, "--dtype", settings.dtype)
        keyed = ServerProcess(Path(store), Path(store) / "server.log", "--api-keys", KEY, *model)
        report |= health_during_hostile_requests(keyed.url)
        keyed.stop()
        whole, whole_url = serve(settings.model_copy(update={"prefill_chunk_tokens": 1 << 20}))
        report["unchunked_max_stall_ms"] = round(max_stall_ms_while_a_long_prompt_joins(whole_url), 1)
        whole.should_exit = True
    report |= {
        "health_p50_ms_idle": round(statistics.median(idle), 1),
        "health_max_ms_during_huge_prompt": round(max(during_huge), 1),
        "health_max_ms_during_413s": round(max(during_413), 1),
        "stall_unchunked_over_chunked": round(report["unchunked_max_stall_ms"] / report["chunked_max_stall_ms"], 2),  # type: ignore[operator]
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
