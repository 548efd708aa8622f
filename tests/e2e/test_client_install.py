"""The client installs on its own, as a user without torch installs it: `pip install ./client` into
a fresh virtual environment, then its import and its command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_client_installs_alone_into_a_fresh_venv_without_torch(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(ROOT / "client")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    code = (
        "import importlib.util, qadapter.client as c; "
        "assert importlib.util.find_spec('torch') is None, 'torch is installed'; "
        f"assert c.QAdapterClient and c.__file__.startswith({str(venv)!r}), c.__file__; print('ok')"
    )
    imported = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert imported.returncode == 0 and imported.stdout.strip() == "ok", imported.stderr
    helped = subprocess.run([str(venv / "bin" / "qadapter-client"), "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "Talk to a running qadapter server" in helped.stdout
