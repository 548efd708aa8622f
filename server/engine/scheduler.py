"""Admission and batch forming: a bounded waiting queue, a cap on running requests and prefill tokens.

No torch here: the scheduler is bookkeeping, tested without a model.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from qadapter.core.errors import Overloaded
from qadapter.core.settings import Settings
from qadapter.server.engine.request import Sequence


@dataclass
class Batch:
    """One step's work: sequences to prefill (joining now) and sequences to decode one token."""

    prefill: list[Sequence] = field(default_factory=list)
    decode: list[Sequence] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.prefill and not self.decode


class Scheduler:
    """Thread-safe: requests arrive from the event loop, the engine thread schedules and finishes."""

    def __init__(self, settings: Settings) -> None:
        self._max_running = settings.max_running  # a Q-adapter request is two batch rows
        self._max_waiting = settings.max_waiting
        self._max_prefill_tokens = settings.max_prefill_tokens  # summed over the rows of one admitted group
        self._lock = threading.Lock()
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        return len(self._running)

    def running_per_adapter(self) -> Counter[str | None]:
        with self._lock:
            return Counter(seq.adapter_key for seq in self._running)

    def waiting_per_adapter(self) -> Counter[str | None]:
        with self._lock:
            return Counter(seq.adapter_key for seq in self._waiting)

    def add(self, seq: Sequence, retry_after_s: float) -> None:
        """Queue a request, or raise Overloaded when the waiting queue is full."""
        with self._lock:
            if len(self._waiting) >= self._max_waiting:
                raise Overloaded(
                    f"the server is at capacity ({len(self._waiting)} requests waiting); retry shortly",
                    retry_after_s=retry_after_s,
                )
            self._waiting.append(seq)

    def abort(self, request_id: str) -> Sequence | None:
        """Mark a request aborted. A waiting one leaves at once and is returned (it never ran);
        a running one is left for the engine to remove at its next step."""
        with self._lock:
            for seq in self._waiting:
                if seq.request_id == request_id and not seq.is_aborted:
                    self._waiting.remove(seq)
                    seq.is_aborted = True
                    return seq
            for seq in self._running:
                if seq.request_id == request_id and not seq.is_aborted:
                    seq.is_aborted = True
        return None

    def schedule(self, admit: bool = True, is_ready: Callable[[Sequence], bool] = lambda _: True) -> Batch:
        """Decode all running requests; with `admit`, admit waiting ones in arrival order while the
        limits allow (the prefill budget bounds one group of joining requests). A request that is
        not ready (its adapter is still loading) keeps its place; those behind it may pass."""
        with self._lock:
            batch = Batch(decode=list(self._running))
            budget = self._max_prefill_tokens
            for seq in list(self._waiting) if admit else []:
                if len(self._running) >= self._max_running:
                    break
                if not is_ready(seq):
                    continue
                cost = seq.num_prompt_tokens * seq.num_rows
                # The first admission of a step ignores the budget, so a long prompt cannot starve.
                if batch.prefill and cost > budget:
                    break
                self._waiting.remove(seq)
                budget -= cost
                batch.prefill.append(seq)
                self._running.append(seq)
            return batch

    def waiting_adapter_keys(self) -> set[str]:
        """The adapter versions that waiting requests pinned."""
        with self._lock:
            return {seq.adapter_key for seq in self._waiting if seq.adapter_key is not None}

    def finish(self, seqs: list[Sequence]) -> None:
        """Remove finished or aborted sequences from the running set."""
        if not seqs:
            return
        with self._lock:
            done = set(map(id, seqs))
            self._running = [seq for seq in self._running if id(seq) not in done]

    def request_ids(self) -> list[str]:
        """Every waiting and running request's id."""
        with self._lock:
            return [seq.request_id for seq in (*self._waiting, *self._running)]

    def take_running(self) -> list[Sequence]:
        """Remove and return every running sequence (after an engine fault)."""
        with self._lock:
            running, self._running = self._running, []
            return running

    def take_waiting(self, which: Callable[[Sequence], bool] = lambda _: True) -> list[Sequence]:
        """Remove and return the waiting sequences `which` selects (every one by default: at shutdown)."""
        with self._lock:
            taken = [seq for seq in self._waiting if which(seq)]
            self._waiting = deque(seq for seq in self._waiting if not which(seq))
            return taken

    def uses(self, adapter_key: str) -> bool:
        """Whether any waiting or running request pins this adapter version."""
        with self._lock:
            return any(seq.adapter_key == adapter_key for seq in (*self._waiting, *self._running))
