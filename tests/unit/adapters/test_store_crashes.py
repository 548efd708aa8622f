"""A store that every crash leaves startable: a real process runs an install, a replace or a delete
and is killed (SIGKILL) at each durable step; the store then starts, serves the last complete
version of every name, and holds nothing half-written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qadapter.adapters.format import WEIGHTS_FILE, AdapterLimits
from qadapter.adapters.store import AdapterStore
from qadapter.core.base import BaseModelInfo
from qadapter.testing.synthetic_adapters import random_adapter
from tests.conftest import tiny_model

ROOT = Path(__file__).resolve().parents[3]
# Runs one store operation in a process of its own, killing itself at the step named in argv.
WORKER = """
import os, shutil, signal, sys
from pathlib import Path
from qadapter.adapters.format import AdapterLimits
from qadapter.adapters.store import AdapterStore
from qadapter.core.base import BaseModelInfo
from tests.conftest import tiny_model

root, operation, crash_at, source = Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])

def step(label):
    if label == crash_at:
        os.kill(os.getpid(), signal.SIGKILL)

store = AdapterStore(root, BaseModelInfo.from_model(tiny_model(), "tiny-llama"), AdapterLimits(), on_step=step)
if operation == "delete":
    store.delete("crashy")
else:
    staging = store.staging_dir()
    shutil.copytree(source, staging, dirs_exist_ok=True)
    step("unpacked")
    stored = store.install(staging, "crashy", replace=operation == "replace")
    store.remove_versions_before("crashy", stored.version)
"""
STEPS = {
    "upload": ["unpacked", "install: fsynced", "install: renamed", "install: done"],
    "replace": ["unpacked", "install: fsynced", "install: renamed", "install: done", "remove: renamed", "remove: done"],
    "delete": ["remove: renamed", "remove: done"],
}


@pytest.fixture(scope="module")
def info() -> BaseModelInfo:
    return BaseModelInfo.from_model(tiny_model(), "tiny-llama")


def crash(root: Path, operation: str, step: str, source: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(root), operation, step, str(source)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -signal.SIGKILL, f"the worker was not killed at {step!r}: {done.stderr}"


@pytest.mark.slow
@pytest.mark.parametrize(("operation", "step"), [(op, step) for op, steps in STEPS.items() for step in steps])
def test_a_kill_at_any_step_leaves_a_store_that_starts_whole(
    tmp_path: Path, info: BaseModelInfo, operation: str, step: str
) -> None:
    root = tmp_path / "store"
    store = AdapterStore(root, info, AdapterLimits())
    other = random_adapter(tmp_path / "other-src", info, "other", b_std=0.1, seed=1).path
    store.install(_copy(other, store.staging_dir()), None, replace=False)
    if operation != "upload":  # a first version to replace or delete
        first = random_adapter(tmp_path / "v1-src", info, "crashy", b_std=0.1, seed=2).path
        store.install(_copy(first, store.staging_dir()), None, replace=False)
    source = random_adapter(tmp_path / "v2-src", info, "crashy", b_std=0.1, seed=3).path

    crash(root, operation, step, source)

    started = AdapterStore(root, info, AdapterLimits())
    served = {s.name: s.version for s in started.load_all()}
    assert served.pop("other") == 1  # the bystander is untouched
    possible = {
        "upload": [{}, {"crashy": 1}],
        "replace": [{"crashy": 1}, {"crashy": 2}],
        "delete": [{"crashy": 1}, {}],
    }[operation]
    assert served in possible, f"after a kill at {step!r}: {served}"
    if step.endswith("done") or step == "remove: renamed":
        assert served == possible[1]  # the step that makes the change durable was taken
    left = sorted(p.name for p in root.iterdir() if p.name != ".lock")
    assert left == sorted(["other@1", *(f"crashy@{v}" for v in served.values())])  # nothing half, no leftovers
    assert started.broken() == []


def test_an_empty_older_version_beside_a_whole_one_is_removed_not_fatal(tmp_path: Path, info: BaseModelInfo) -> None:
    root = tmp_path / "store"
    store = AdapterStore(root, info, AdapterLimits())
    source = random_adapter(tmp_path / "src", info, "name", b_std=0.1).path
    store.install(_copy(source, store.staging_dir()), None, replace=False)
    (root / "name@1").rename(root / "name@5")
    (root / "name@4").mkdir()  # what an interrupted in-place delete of version 4 used to leave
    served = AdapterStore(root, info, AdapterLimits()).load_all()
    assert [(s.name, s.version) for s in served] == [("name", 5)]
    assert not (root / "name@4").exists()


def test_a_broken_current_version_is_quarantined_and_an_older_whole_one_serves(
    tmp_path: Path, info: BaseModelInfo
) -> None:
    root = tmp_path / "store"
    store = AdapterStore(root, info, AdapterLimits())
    for seed, name in ((1, "keep"), (2, "mixed"), (3, "mixed"), (4, "lost")):
        source = random_adapter(tmp_path / f"src{seed}", info, name, b_std=0.1, seed=seed).path
        store.install(_copy(source, store.staging_dir()), None, replace=name == "mixed" and seed == 3)
    (root / "mixed@2" / WEIGHTS_FILE).write_bytes(b"not safetensors")  # the current version, broken
    (root / "lost@1" / WEIGHTS_FILE).unlink()  # the only version, broken
    base_named = random_adapter(tmp_path / "src5", info, "tiny-llama", b_std=0.1, seed=5).path
    os.rename(base_named, root / "tiny-llama@1")  # named like the base model: requests could not reach it

    restarted = AdapterStore(root, info, AdapterLimits())
    served = {s.name: s.version for s in restarted.load_all()}
    assert served == {"keep": 1, "mixed": 1}
    broken = {b.stored_as: b.reason for b in restarted.broken()}
    assert set(broken) == {"mixed@2", "lost@1", "tiny-llama@1"}
    assert "corrupt or truncated" in broken["mixed@2"] and "missing adapter_model.safetensors" in broken["lost@1"]
    assert "the base model's id" in broken["tiny-llama@1"]
    assert sorted(p.name for p in root.iterdir()) == [".lock", ".quarantine", "keep@1", "mixed@1"]


def _copy(source: Path, target: Path) -> Path:
    for file in source.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return target


RACER = """
import sys, time
from pathlib import Path
from qadapter.adapters.format import AdapterLimits
from qadapter.adapters.store import AdapterStore
from qadapter.core.base import BaseModelInfo
from qadapter.core.errors import AdapterExists
from tests.conftest import tiny_model

root, source, start_at = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
store = AdapterStore(root, BaseModelInfo.from_model(tiny_model(), "tiny-llama"), AdapterLimits())
staging = store.staging_dir()
for file in source.iterdir():
    (staging / file.name).write_bytes(file.read_bytes())
time.sleep(max(0.0, start_at - time.time()))  # both processes install at the same moment
try:
    print(store.install(staging, "race", replace=False).version)
except AdapterExists:
    print("exists")
"""


@pytest.mark.slow
def test_processes_racing_to_upload_one_name_have_one_winner(tmp_path: Path, info: BaseModelInfo) -> None:
    """The store's lock holds across processes (and, on a shared file system, hosts), not just threads."""
    root = tmp_path / "store"
    AdapterStore(root, info, AdapterLimits())
    sources = [random_adapter(tmp_path / f"src{i}", info, "race", b_std=0.1, seed=i).path for i in range(2)]
    start_at = time.time() + 8  # after both have imported torch
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(root), str(source), str(start_at)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for source in sources
    ]
    outcomes = sorted(racer.communicate(timeout=120)[0].strip() for racer in racers)
    assert outcomes == ["1", "exists"]
    assert [p.name for p in root.iterdir() if not p.name.startswith(".")] == ["race@1"]
