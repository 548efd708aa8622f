"""Hot-swap under load: upload a new adapter while 8 streams run, on the embedded model.

    python bench/hotswap.py --json [--device cuda]

Prints `swap_to_first_token_ms` (upload start → first token served from the new adapter),
`max_stream_stall_ms` (longest gap between two tokens of a running stream while the swap is under
way, the first request on the new adapter joining the batch included), `upload_stall_ms` (the same
while the upload alone is under way: validation, store, publish) and `failed` (requests that did not
complete). The clients run in this process, beside the server: on 2 cores they compete with it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
import uvicorn

from qadapter.adapters.format import CONFIG_FILE, MANIFEST_FILE, WEIGHTS_FILE
from qadapter.core.cli_options import add_model_options, settings_from
from qadapter.core.model import load_base_model
from qadapter.server.app import create_app
from qadapter.testing.synthetic_adapters import random_adapter

ADMIN = "bench-admin"
QUESTION = [{"role": "user", "content": "Tell me a long story about the sea."}]


def stream_tokens(url: str, model: str, max_tokens: int, stamps: list[float], failures: list[str]) -> None:
    body = {"model": model, "messages": QUESTION, "max_tokens": max_tokens, "stream": True, "ignore_eos": True}
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as response:
            if response.status_code != 200:
                failures.append(f"{model}: {response.status_code}")
                return
            for line in response.iter_lines():
                if line.startswith("data: {") and _is_generated(json.loads(line[6:])):
                    stamps.append(time.perf_counter())
    except httpx.HTTPError as exc:
        failures.append(f"{model}: {exc!r}")


def _is_generated(chunk: dict) -> bool:
    """Whether a chunk comes from a generated token: it carries text or ends the choice (the first
    chunk only announces the role, content "", before the prompt has even been run)."""
    choices = chunk.get("choices", [])
    return any(choice.get("delta", {}).get("content") or choice.get("finish_reason") for choice in choices)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    add_model_options(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as store, tempfile.TemporaryDirectory() as sources:
        args.adapters_dir, args.admin_key, args.port = Path(store), ADMIN, 0
        settings = settings_from(args)
        loaded = load_base_model(settings)  # for the adapters' base fingerprint; the app loads its own
        info, placement = loaded.info, loaded.placement
        del loaded
        random_adapter(Path(store) / "running", info, "running", b_std=0.02, seed=1)
        new = random_adapter(Path(sources) / "fresh", info, "fresh", b_std=0.02, seed=2).path
        server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=8799, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        url = "http://127.0.0.1:8799"
        while not server.started:
            time.sleep(0.1)
        stamps: list[list[float]] = [[] for _ in range(8)]
        failures: list[str] = []
        streams = [threading.Thread(target=stream_tokens, args=(url, "running", 160, s, failures)) for s in stamps]
        for thread in streams:
            thread.start()
        while sum(1 for s in stamps if s) < 8:
            time.sleep(0.05)
        time.sleep(1.0)  # steady decoding before the swap
        swap_start = time.perf_counter()
        files = [("files", (f, (new / f).read_bytes())) for f in (CONFIG_FILE, WEIGHTS_FILE, MANIFEST_FILE)]
        uploaded = httpx.post(
            f"{url}/admin/adapters", files=files, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120
        )
        uploaded_at = time.perf_counter()
        if uploaded.status_code != 201:
            failures.append(f"upload: {uploaded.status_code} {uploaded.text}")
        first: list[float] = []
        stream_tokens(url, "fresh", 1, first, failures)
        swap_end = time.perf_counter()
        for thread in streams:
            thread.join()
        server.should_exit = True

    def longest_gap(start: float, end: float) -> float:
        gaps = [b - a for s in stamps for a, b in zip(s, s[1:]) if b >= start and a <= end]
        return round(1000 * max(gaps, default=0.0), 1)

    report = {
        "swap_to_first_token_ms": round(1000 * (first[0] - swap_start), 1) if first else None,
        "max_stream_stall_ms": longest_gap(swap_start, swap_end),
        "upload_stall_ms": longest_gap(swap_start, uploaded_at),
        "failed": len(failures),
        "failures": failures,
        **placement,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
