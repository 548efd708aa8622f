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

from qadapter.core.errors import InvalidRequest, Overloaded

log = logging.getLogger(__name__)
STARTUP_TIMEOUT_S = 60.0  # reading the tokenizer takes about a second; a loaded CI machine is slower
MAX_VERDICTS = 256
EXIT_GRACE_S = 1.0
MAX_WAITING_CHECKS = 8  # grammars waiting for the one process; more are a 503, not a thread each


@dataclass(frozen=True)
class CheckedGrammar:
    """A grammar in llguidance's form, checked; `ends_at_once`: it allows nothing but the end."""

    grammar: str
    ends_at_once: bool


class GrammarGuard:
    """The server's side of the grammar check process. Thread-safe; `check` blocks (call it off the loop)."""

    def __init__(self, tokenizer: Any, vocab_size: int, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._lock = threading.Lock()  # one grammar at a time in the process
        self._waiting = threading.BoundedSemaphore(MAX_WAITING_CHECKS)
        self._process: subprocess.Popen[str] | None = None
        self._verdicts: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._verdicts_lock = threading.Lock()  # a known grammar never waits for another's check
        self._num_asked = 0
        self._tokenizer_file = _tokenizer_file(tokenizer)
        self._worker_args = [str(vocab_size), str(tokenizer.eos_token_id)]
        threading.Thread(target=self._start, name="qadapter-grammar-check", daemon=True).start()

    def check(self, param: str, kind: str, text: str) -> CheckedGrammar:
        """The grammar of `text` (a `kind` of llguidance.grammar_from), or a 400 that names `param`."""
        if self._tokenizer_file is None:
            raise InvalidRequest(f"{param}: structured outputs need a fast tokenizer, which this model lacks")
        key = (kind, text)
        with self._verdicts_lock:
            verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._checked(kind, text)
            if verdict.get("cache", True):
                with self._verdicts_lock:
                    self._verdicts[key] = verdict
                    if len(self._verdicts) > MAX_VERDICTS:
                        self._verdicts.popitem(last=False)
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
            with self._lock, suppress(Overloaded):
                self._running()

    def _checked(self, kind: str, text: str) -> dict[str, Any]:
        """The process's verdict; a 503 when too many grammars already wait for theirs."""
        if not self._waiting.acquire(blocking=False):
            raise Overloaded(f"{MAX_WAITING_CHECKS} grammars are waiting for their check; retry shortly", 1)
        try:
            with self._lock:
                return self._ask(kind, text)
        finally:
            self._waiting.release()

    def _ask(self, kind: str, text: str) -> dict[str, Any]:
        process = self._running()
        assert process.stdin is not None
        self._num_asked += 1
        with suppress(BrokenPipeError):  # it died: the read below says so
            process.stdin.write(json.dumps({"id": self._num_asked, "kind": kind, "text": text}) + "\n")
            process.stdin.flush()
        answer = self._read_line(process, self._timeout_s)
        if answer is not None and answer.get("id") == self._num_asked and ("grammar" in answer or "error" in answer):
            return answer
        try:  # a process that died closed its pipe a moment before its exit can be seen
            process.wait(timeout=EXIT_GRACE_S)
            crashed = True
        except subprocess.TimeoutExpired:
            crashed = False
        log.warning("the grammar check process %s; restarting it", "crashed" if crashed else "timed out")
        self._stop()
        if crashed:  # a grammar that crashes it does so again: kept
            return {"failure": "is too complex for this server's grammar compiler (fewer nested references or rules)"}
        return {
            "failure": f"did not compile within {self._timeout_s:g} s",
            "cache": False,
        }  # it may on a quieter machine

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
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, encoding="utf-8"
        )
        if self._read_line(self._process, STARTUP_TIMEOUT_S) is None:
            self._stop()
            raise Overloaded("structured outputs are unavailable: the grammar check process did not start", 5)
        return self._process

    @staticmethod
    def _read_line(process: subprocess.Popen[str], timeout_s: float) -> dict[str, Any] | None:
        """The process's next answer; None when it died, said nothing within `timeout_s`, or garbled it."""
        assert process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], timeout_s)
        line = process.stdout.readline() if readable else ""
        try:
            return json.loads(line) if line else None
        except ValueError:
            return None

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()
        process.wait()
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                with suppress(OSError):  # what a dead process left unread in the pipe
                    pipe.close()


def _tokenizer_file(tokenizer: Any) -> Path | None:
    """The tokenizer as the check process reads it (the Rust tokenizer's JSON), or None when it has none."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    backend = copy(backend)  # as llguidance.hf does: no padding or truncation in the copy it reads
    backend.no_padding()
    backend.no_truncation()
    with tempfile.NamedTemporaryFile(
        "w", suffix=".json", prefix="qadapter-tokenizer-", delete=False, encoding="utf-8"
    ) as file:
        file.write(backend.to_str())
    return Path(file.name)
