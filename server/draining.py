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

# After the abort, the seconds the last events get to reach their streams and be written.
ABORTED_STREAMS_GRACE_S = 5.0
POLL_S = 0.05


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, shutdown_timeout_s: float) -> None:
        super().__init__(config)
        self._app = app
        self._shutdown_timeout_s = shutdown_timeout_s
        self._is_draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        serving = getattr(self._app.state, "serving", None)
        if self._is_draining or serving is None:  # a second signal, or not started yet: stop now
            super().handle_exit(sig, frame)
        else:
            self._is_draining = True
            serving.is_draining = True
            threading.Thread(target=self._drain, name="qadapter-drain", daemon=True).start()
        # uvicorn re-raises the signal once it has stopped, so the exit status would read "killed";
        # a graceful shutdown exits 0 instead.
        self._captured_signals.clear()

    def _drain(self) -> None:
        engine = self._app.state.engine
        _wait_until(lambda: engine.is_idle, self._shutdown_timeout_s)
        engine.abort_all()
        _wait_until(lambda: engine.is_idle, ABORTED_STREAMS_GRACE_S)
        self.should_exit = True  # uvicorn closes its sockets and waits for the last responses


def _wait_until(done: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        time.sleep(POLL_S)
