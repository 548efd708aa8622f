"""Every grammar is compiled once in a process of its own before a request that uses it is admitted
(server/grammar_worker.py says why): a grammar that crashes that process, or does not compile
within the time budget (the process is killed), is refused with a 400; the next check starts a new
process. Verdicts are kept by grammar, so a client that sends the same schema again waits for none."""

from __future__ import annotations

import json
import logging
import select
import subprocess
import sys
import tempfile
import threading
from collections import OrderedDict
from contextlib import suppress
from copy import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qadapter.core.errors import InvalidRequest

log = logging.getLogger(__name__)
STARTUP_TIMEOUT_S = 60.0  # reading the tokenizer takes about a second; a loaded CI machine is slower
MAX_VERDICTS = 256


@dataclass(frozen=True)
class CheckedGrammar:
    """A grammar in llguidance's form, checked; `ends_at_once`: it allows nothing but the end."""

    grammar: str
    ends_at_once: bool


class GrammarGuard:
    """The server's side of the grammar check process. Thread-safe; `check` blocks (call it off the loop)."""

    def __init__(self, tokenizer: Any, vocab_size: int, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None
        self._verdicts: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._tokenizer_file = _tokenizer_file(tokenizer)
        self._worker_args = [str(vocab_size), str(tokenizer.eos_token_id)]
        threading.Thread(target=self._start, name="qadapter-grammar-check", daemon=True).start()

    def check(self, param: str, kind: str, text: str) -> CheckedGrammar:
        """The grammar of `text` (a `kind` of llguidance.grammar_from), or a 400 that names `param`."""
        if self._tokenizer_file is None:
            raise InvalidRequest(f"{param}: structured outputs need a fast tokenizer, which this model lacks")
        key = (kind, text)
        with self._lock:
            verdict = self._verdicts.get(key)
            if verdict is None:
                verdict = self._verdicts[key] = self._ask({"kind": kind, "text": text})
                if len(self._verdicts) > MAX_VERDICTS:
                    self._verdicts.popitem(last=False)
            self._verdicts.move_to_end(key)
        if "error" in verdict:
            raise InvalidRequest(f"{param} cannot be used: {verdict['error']}", param=param)
        if "failure" in verdict:
            raise InvalidRequest(f"{param} {verdict['failure']}; simplify it", param=param)
        return CheckedGrammar(verdict["grammar"], verdict["ends_at_once"])

    def close(self) -> None:
        with self._lock:
            self._stop()
        if self._tokenizer_file is not None:
            self._tokenizer_file.unlink(missing_ok=True)

    def _start(self) -> None:
        """Start the process ahead of the first grammar (it reads the tokenizer, about a second)."""
        if self._tokenizer_file is not None:
            with self._lock, suppress(InvalidRequest):
                self._running()

    def _ask(self, request: dict[str, str]) -> dict[str, Any]:
        process = self._running()
        assert process.stdin is not None
        try:
            process.stdin.write(json.dumps(request) + "\n")
            process.stdin.flush()
        except BrokenPipeError:
            pass  # it died: the read below says so
        answer = self._read_line(process, self._timeout_s)
        if answer is not None:
            return answer
        crashed = process.poll() is not None
        log.warning("the grammar check process %s; restarting it", "crashed" if crashed else "timed out")
        self._stop()
        if crashed:
            return {"failure": "is too complex for this server's grammar compiler (fewer nested references or rules)"}
        return {"failure": f"did not compile within {self._timeout_s:g} s"}

    def _running(self) -> subprocess.Popen[str]:
        if self._process is not None and self._process.poll() is None:
            return self._process
        command = [
            sys.executable,
            "-m",
            "qadapter.server.grammar_worker",
            str(self._tokenizer_file),
            *self._worker_args,
        ]
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self._read_line(self._process, STARTUP_TIMEOUT_S) is None:
            self._stop()
            raise InvalidRequest("structured outputs are unavailable: the grammar check process did not start")
        return self._process

    @staticmethod
    def _read_line(process: subprocess.Popen[str], timeout_s: float) -> dict[str, Any] | None:
        """The process's next answer; None when it died or said nothing within `timeout_s`."""
        assert process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], timeout_s)
        line = process.stdout.readline() if readable else ""
        return json.loads(line) if line else None

    def _stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            for pipe in (self._process.stdin, self._process.stdout):
                if pipe is not None:
                    pipe.close()
            self._process = None


def _tokenizer_file(tokenizer: Any) -> Path | None:
    """The tokenizer as the check process reads it (the Rust tokenizer's JSON), or None when it has none."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    backend = copy(backend)  # as llguidance.hf does: no padding or truncation in the copy it reads
    backend.no_padding()
    backend.no_truncation()
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="qadapter-tokenizer-", delete=False) as file:
        file.write(backend.to_str())
    return Path(file.name)
