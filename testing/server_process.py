"""A real `qadapter serve` process on a free port, for end-to-end tests and the benchmarks that need one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

QADAPTER = str(Path(sys.executable).parent / "qadapter")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """Starts the server, waits for /ready, stops it; its log is kept for failed tests."""

    def __init__(self, adapters_dir: Path, log_path: Path, *flags: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "w")  # noqa: SIM115 (the server writes to it until stop())
        args = [QADAPTER, "serve", "--port", str(self.port), "--adapters-dir", str(adapters_dir), *flags]
        environment = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=environment)
        self._wait_ready(log_path)

    def _wait_ready(self, log_path: Path, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout_s} s:\n{log_path.read_text()}")

    def kill_hard(self) -> None:
        """kill -9: no shutdown code runs."""
        self.process.kill()
        self.process.wait()
        self._log.close()

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a Prometheus metric's samples that carry these labels (0 when there is none): with
        no labels, e.g. across every replica."""
        total = 0.0
        for family in text_string_to_metric_families(httpx.get(f"{self.url}/metrics", timeout=5).text):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    total += sample.value
        return total
