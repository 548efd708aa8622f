"""A real server process on a free port (`qadapter serve`, or a peer such as vLLM), for end-to-end tests and
the benchmarks that need one."""

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


class ServedProcess:
    """Starts a server program on a free port, waits until `ready_path` answers 200, stops it; its log
    is kept for failed tests. `args` is the command with `{port}` where the port goes."""

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        ready_path: str = "/ready",
        env: dict[str, str] | None = None,
        timeout_s: float = 180,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "w")  # noqa: SIM115 (the server writes to it until stop())
        command = [arg.replace("{port}", str(self.port)) for arg in args]
        environment = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=environment)
        self._wait_ready(log_path, ready_path, timeout_s)

    def _wait_ready(self, log_path: Path, ready_path: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{self.url}{ready_path}", timeout=1).status_code == 200:
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

    def __enter__(self) -> ServedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a Prometheus metric's samples that carry these labels (0 when there is none): with
        no labels, e.g. across every replica."""
        total = 0.0
        for family in text_string_to_metric_families(httpx.get(f"{self.url}/metrics", timeout=5).text):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    total += sample.value
        return total


class ServerProcess(ServedProcess):
    """`qadapter serve` with these flags, on a free port, its adapters in `adapters_dir`."""

    def __init__(self, adapters_dir: Path, log_path: Path, *flags: str, env: dict[str, str] | None = None) -> None:
        args = [QADAPTER, "serve", "--port", "{port}", "--adapters-dir", str(adapters_dir), *flags]
        super().__init__(args, log_path, env=env)
