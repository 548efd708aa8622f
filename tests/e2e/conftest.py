"""Real servers for the end-to-end modules: the embedded model with three adapters and an API key; an admin one."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qadapter.core.knobs import Knobs
from qadapter.core.model import LoadedModel
from qadapter.testing.server_process import ServerProcess
from qadapter.testing.synthetic_adapters import random_adapter

KEY = "test-key"
ADMIN_KEY = "admin-key"
SMALL_UPLOAD_LIMIT = 8 * 2**20


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here runs real servers or the embedded model: all marked e2e (`-m "not e2e"` skips them)."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.e2e)


def eventually(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Whether `condition` holds within `timeout_s`, polled; timeouts are generous: CI machines can be slow."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.fixture(scope="session")
def adapters_dir(tmp_path_factory: pytest.TempPathFactory, embedded: LoadedModel) -> Path:
    """bold and wild change the policy (random LoRA); zero is an untrained adapter."""
    root = tmp_path_factory.mktemp("adapters")
    random_adapter(root / "bold", embedded.info, name="bold", b_std=0.5, seed=1)
    random_adapter(root / "wild", embedded.info, name="wild", b_std=0.5, seed=2, knobs=Knobs(0.8, 0.05))
    random_adapter(root / "zero", embedded.info, name="zero")
    return root


@pytest.fixture(scope="session")
def server(adapters_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(adapters_dir, tmp_path_factory.mktemp("logs") / "server.log", "--api-keys", KEY)
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="session")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The adapter store of `small_admin_server`, empty at its start."""
    return tmp_path_factory.mktemp("small-store")


@pytest.fixture(scope="session")
def small_admin_server(small_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Admin routes on, a small upload limit (8 MiB), and a tiny queue (1 running, 1 waiting) to provoke 503s."""
    flags = (
        "--api-keys",
        KEY,
        "--admin-key",
        ADMIN_KEY,
        "--max-running",
        "1",
        "--max-waiting",
        "1",
        "--max-upload-bytes",
        str(SMALL_UPLOAD_LIMIT),
    )
    process = ServerProcess(small_store, tmp_path_factory.mktemp("small-logs") / "server.log", *flags)
    yield process
    assert process.stop() == 0
