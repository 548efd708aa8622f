"""The tree keeps the shape docs/design.md §2 gives it: who may import whom, the client without torch,
no generic top-level import names, and the size budgets of files and functions."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"core", "adapters", "training", "server", "testing", "client"}  # top-level folder = qadapter.<folder>
MAY_IMPORT = {
    "core": set(),
    "adapters": {"core"},
    "training": {"core", "adapters"},
    "server": {"core", "adapters"},
    "testing": {"core", "adapters", "training"},  # test helpers: the training reference step too
    "client": set(),
}
# The one door from the server to training: the `qadapter` command also runs `train` and `eval`.
COMMAND_LINE = Path("server/cli.py"), "training"
MAX_FILE_LINES = 300
MAX_FUNCTION_LINES = 60


def python_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [ROOT / name for name in listed if (ROOT / name).is_file()]


def imported_modules(path: Path) -> list[str]:
    modules = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.append(node.module)
    return modules


def folder_of(path: Path) -> str:
    return path.relative_to(ROOT).parts[0]


def test_each_package_imports_only_the_packages_below_it() -> None:
    wrong = []
    for path in python_files():
        folder = folder_of(path)
        if folder not in PACKAGES:
            continue
        for module in imported_modules(path):
            parts = module.split(".")
            allowed = MAY_IMPORT[folder] | ({COMMAND_LINE[1]} if path.relative_to(ROOT) == COMMAND_LINE[0] else set())
            if parts[0] == "qadapter" and len(parts) > 1 and parts[1] != folder and parts[1] not in allowed:
                wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_nothing_imports_a_generic_top_level_name() -> None:
    """`server`, `adapters`, `client` and `core` exist only as qadapter.*: the bare names would load a
    second copy of a module from the working directory."""
    wrong = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in python_files()
        for module in imported_modules(path)
        if module.split(".")[0] in PACKAGES
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.slow
def test_the_served_app_imports_neither_training_nor_peft() -> None:
    """Uploads are validated without peft; only the command line reaches training."""
    code = (
        "import sys, qadapter.server.app, qadapter.server.cluster.replica; "
        "loaded = [m for m in sys.modules if m == 'peft' or m.startswith('qadapter.training')]; "
        "assert not loaded, loaded"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr


def test_the_client_imports_no_torch() -> None:
    code = (
        "import sys, qadapter.client, qadapter.client.cli; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("path", [p for p in python_files() if folder_of(p) != "tests"], ids=str)
def test_files_and_functions_keep_their_size_budgets(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    assert source.count("\n") <= MAX_FILE_LINES, f"{path.name} holds more than {MAX_FILE_LINES} lines: split it"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES  # type: ignore[operator]
    ]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"
