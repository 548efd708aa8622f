"""`qadapter-client` run as a user runs it (a subprocess, keys from the environment) against a real server."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qadapter.client import QAdapterClient
from qadapter.testing.server_process import ServerProcess, free_port
from tests.e2e.conftest import ADMIN_KEY, KEY

CLIENT = str(Path(sys.executable).parent / "qadapter-client")
BASE = "smollm2-135m-instruct"
QUESTION = "What is the capital of France?"


def environment(server: ServerProcess, **overrides: str) -> dict[str, str]:
    return {
        **os.environ,
        "QADAPTER_URL": server.url,
        "QADAPTER_API_KEY": KEY,
        "QADAPTER_ADMIN_KEY": ADMIN_KEY,
        **overrides,
    }


def run_cli(server: ServerProcess, *args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLIENT, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=environment(server, **env),
        timeout=300,
        check=False,
    )


@pytest.fixture
def reference(small_admin_server: ServerProcess) -> QAdapterClient:
    return QAdapterClient(small_admin_server.url, api_key=KEY)


def test_upload_then_chat_with_the_adapter(
    small_admin_server: ServerProcess, reference: QAdapterClient, adapters_dir: Path
) -> None:
    uploaded = run_cli(small_admin_server, "adapters", "upload", str(adapters_dir / "wild"), "--name", "cli-wild")
    assert uploaded.returncode == 0, uploaded.stderr
    assert uploaded.stdout.startswith("uploaded cli-wild version 1")

    expected = reference.chat(QUESTION, model="cli-wild", max_tokens=16, temperature=0).text
    said = run_cli(small_admin_server, "chat", "--adapter", "cli-wild", "--max-tokens", "16", QUESTION)
    assert said.returncode == 0, said.stderr
    assert said.stdout == expected + "\n"
    piped = run_cli(small_admin_server, "chat", "--adapter", "cli-wild", "--max-tokens", "16", stdin=QUESTION)
    assert piped.stdout == expected + "\n"

    continued = run_cli(
        small_admin_server, "complete", "--adapter", "cli-wild", "--max-tokens", "5", "Once upon a time"
    )
    assert (
        continued.stdout
        == reference.complete("Once upon a time", model="cli-wild", max_tokens=5, temperature=0).text + "\n"
    )
    listed = run_cli(small_admin_server, "adapters", "list").stdout
    assert re.search(r"^cli-wild\s+1\s+\d+\s+0\s", listed, re.MULTILINE), listed
    assert re.search(rf"^cli-wild\s+adapter v1 on {BASE}$", run_cli(small_admin_server, "models").stdout, re.MULTILINE)

    assert run_cli(small_admin_server, "adapters", "delete", "cli-wild").stdout == "deleted cli-wild\n"
    gone = run_cli(small_admin_server, "chat", "--adapter", "cli-wild", QUESTION)
    assert gone.returncode == 1
    assert "error: The model 'cli-wild' does not exist" in gone.stderr and "qadapter-client models" in gone.stderr


def test_interactive_chat_streams_and_keeps_the_conversation(
    small_admin_server: ServerProcess, reference: QAdapterClient
) -> None:
    first = reference.chat(QUESTION, model=BASE, max_tokens=8, temperature=0).text
    follow_up = "And of Germany?"
    second = reference.chat(
        [
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": first},
            {"role": "user", "content": follow_up},
        ],
        model=BASE,
        max_tokens=8,
        temperature=0,
    ).text
    controller, terminal = pty.openpty()  # a terminal on stdin: the CLI chats interactively
    process = subprocess.Popen(
        [CLIENT, "chat", "--max-tokens", "8"],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=environment(small_admin_server),
    )
    os.close(terminal)
    screen = ""

    def read_until_prompt(count: int) -> None:
        nonlocal screen
        deadline = time.monotonic() + 120
        while len(re.findall(r"(?m)^> ", screen)) < count:
            assert time.monotonic() < deadline, screen
            if select.select([controller], [], [], 1)[0]:
                screen += os.read(controller, 4096).decode().replace("\r\n", "\n")

    try:
        read_until_prompt(1)
        for number, line in enumerate((QUESTION, follow_up), start=2):
            os.write(controller, line.encode() + b"\n")
            read_until_prompt(number)
        os.write(controller, b"\x04")  # Ctrl-D
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        os.close(controller)
    assert f"chatting with {BASE}" in screen
    assert f"> {QUESTION}\n{first}\n> {follow_up}\n{second}\n> " in screen


def test_errors_say_what_to_do(small_admin_server: ServerProcess, adapters_dir: Path) -> None:
    keyless = run_cli(small_admin_server, "adapters", "list", QADAPTER_ADMIN_KEY="")
    assert keyless.returncode == 1 and "hint: pass --admin-key or set QADAPTER_ADMIN_KEY" in keyless.stderr
    assert (
        run_cli(small_admin_server, "--admin-key", ADMIN_KEY, "adapters", "list", QADAPTER_ADMIN_KEY="").returncode == 0
    )
    wrong = run_cli(small_admin_server, "models", QADAPTER_API_KEY="wrong")
    assert wrong.returncode == 1 and "hint: pass --api-key or set QADAPTER_API_KEY" in wrong.stderr

    bold = str(adapters_dir / "bold")
    assert run_cli(small_admin_server, "adapters", "upload", bold, "--name", "cli-twice").returncode == 0
    again = run_cli(small_admin_server, "adapters", "upload", bold, "--name", "cli-twice")
    assert again.returncode == 1 and "hint: add --replace" in again.stderr
    replaced = run_cli(small_admin_server, "adapters", "upload", bold, "--name", "cli-twice", "--replace")
    assert replaced.stdout.startswith("uploaded cli-twice version 2")
    assert run_cli(small_admin_server, "adapters", "delete", "cli-twice").returncode == 0

    nowhere = run_cli(small_admin_server, "--url", f"http://127.0.0.1:{free_port()}", "--retries", "0", "models")
    assert nowhere.returncode == 1 and "is it running" in nowhere.stderr
    empty = run_cli(small_admin_server, "chat", stdin="")
    assert empty.returncode == 1 and "no prompt" in empty.stderr
    missing = run_cli(small_admin_server, "adapters", "upload", str(adapters_dir / "missing"))
    assert missing.returncode == 1 and "no adapter at" in missing.stderr
