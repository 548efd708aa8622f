"""Start-up time of the embedded model: converting the GGUF file (baseline) vs loading our cache.

python bench/startup.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from qadapter.core.model import load_base_model
from qadapter.core.settings import Settings


def timed_load(home: Path, device: str) -> tuple[float, str]:
    """Seconds to load, and the device the model landed on."""
    start = time.perf_counter()
    loaded = load_base_model(Settings(home=home, device=device))
    return time.perf_counter() - start, str(loaded.device)


def process_start(home: Path, device: str) -> float:
    """Wall time of a new Python process that imports the server and loads the cached model."""
    code = (
        "from qadapter.core.settings import Settings; from qadapter.core.model import load_base_model; "
        f"load_base_model(Settings(home={str(home)!r}, device={device!r}))"
    )
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=Path(__file__).parent.parent)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object (the default output)")
    parser.add_argument("--device", default="auto", help="auto (default: CUDA if present), cpu, cuda or cuda:N")
    device = parser.parse_args().device
    with tempfile.TemporaryDirectory() as home:
        first, landed_on = timed_load(Path(home), device)  # converts the GGUF file and fills the cache
        cached = min(timed_load(Path(home), device)[0] for _ in range(3))
        process = min(process_start(Path(home), device) for _ in range(2))
    print(
        json.dumps(
            {
                "first_start_convert_s": round(first, 2),
                "cached_load_s": round(cached, 2),
                "cached_process_start_s": round(process, 2),
                "speedup": round(first / cached, 1),
                "device": landed_on,
            }
        )
    )


if __name__ == "__main__":
    main()
