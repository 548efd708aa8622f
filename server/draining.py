"""Graceful shutdown: on SIGTERM or SIGINT the server keeps accepting connections and answers new
requests 503 (with Retry-After) while running ones get `shutdown_timeout_s` to finish; what is
still running then is aborted, so every stream ends with `finish_reason: "abort"` and `[DONE]`
instead of a cut body; only then does uvicorn close its sockets. A second signal exits at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import FrameType

import uvicorn
from fastapi import FastAPI

from qadapter.server.engine.interface import ServingEngine

# After the abort, the seconds the last events get to reach their streams and be written.
ABORTED_STREAMS_GRACE_S = 5.0
POLL_S = 0.05


class Drain:
    """The server's one shutdown lifecycle: serving, then draining (read by /ready and by the
    refusal of new requests), then the abort of what is left, then `on_done`."""

    def __init__(self, engine: ServingEngine, timeout_s: float, grace_s: float = ABORTED_STREAMS_GRACE_S) -> None:
        self._engine = engine
        self._timeout_s = timeout_s
        self._grace_s = grace_s
        self._began = threading.Event()

    @property
    def is_draining(self) -> bool:
        return self._began.is_set()

    def begin(self, on_done: Callable[[], None]) -> bool:
        """Start draining in the background; False (nothing started) when a drain already runs."""
        if self._began.is_set():
            return False
        self._began.set()
        threading.Thread(target=self._run, args=(on_done,), name="qadapter-drain", daemon=True).start()
        return True

    def _run(self, on_done: Callable[[], None]) -> None:
        _wait_until(lambda: self._engine.is_idle, self._timeout_s)
        self._engine.abort_all()
        _wait_until(lambda: self._engine.is_idle, self._grace_s)
        on_done()


class DrainingServer(uvicorn.Server):
    """uvicorn, with its exit signal turned into the app's drain."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        drain: Drain | None = getattr(self._app.state, "drain", None)
        if drain is None or not drain.begin(on_done=self._close_sockets):  # not started yet, or a second signal
            super().handle_exit(sig, frame)
        # uvicorn re-raises the signal once it has stopped, so the exit status would read "killed";
        # a graceful shutdown exits 0 instead.
        self._captured_signals.clear()

    def _close_sockets(self) -> None:
        self.should_exit = True  # uvicorn closes its sockets and waits for the last responses


def _wait_until(done: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        time.sleep(POLL_S)
