"""The engine: one thread owns the model and loops schedule → run → postprocess; an async facade."""

from __future__ import annotations

import copy
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

import torch

from qadapter.core.errors import ContextTooLong, InvalidRequest, Overloaded, QAdapterError
from qadapter.core.lora import AdapterHost
from qadapter.core.model import LoadedModel
from qadapter.core.settings import Settings
from qadapter.server.engine.detokenize import TextTracker
from qadapter.server.engine.registry import AdapterRegistry
from qadapter.server.engine.request import FinishReason, GenerationRequest, Sequence
from qadapter.server.engine.residency import Residency, WeightReader
from qadapter.server.engine.runner import BatchRunner
from qadapter.server.engine.sampler import Sampler, policy_scores, sequences_of
from qadapter.server.engine.scheduler import Scheduler
from qadapter.server.engine.stats import EngineStats
from qadapter.server.engine.stream import RequestStream, StreamRegistry
from qadapter.server.grammar_worker import ENGINE_STACK_BYTES

log = logging.getLogger(__name__)
T = TypeVar("T")


class Engine:
    """Continuous batching of base and Q-adapter requests; one batched decode forward per step."""

    adapters: AdapterRegistry

    def __init__(
        self,
        loaded: LoadedModel,
        host: AdapterHost,
        settings: Settings,
        read_weights: WeightReader | None = None,
        replica_id: str = "0",
    ) -> None:
        self.replica_id = replica_id  # which engine this is, in metrics and the x-qadapter-replica header
        self._tokenizer = loaded.tokenizer
        self._stop_token_ids = loaded.stop_token_ids
        self._max_context = settings.max_context or loaded.model.config.max_position_embeddings
        self._host = host
        self._runner = BatchRunner(host, loaded.pad_token_id, settings.prefill_chunk_tokens)
        self._sampler = Sampler(host.device, loaded.tokenizer, loaded.model.config.vocab_size)
        self._scheduler = Scheduler(settings)
        self._wakeup = threading.Event()
        residency = Residency(
            host,
            settings.max_resident_adapters,
            self._scheduler.uses,
            self._wakeup.set,
            **({"read_weights": read_weights} if read_weights else {}),
        )
        self.adapters = AdapterRegistry(residency, self._scheduler.uses, self._wakeup.set)
        self._streams = StreamRegistry(self.abort, replica_id)
        self._is_stopping = False
        self._thread = threading.Thread(target=self._loop, name="qadapter-engine", daemon=True)
        self._num_generated_tokens = 0
        self._last_step_s = 0.0
        self._step_s_total = 0.0  # time in steps that ran a forward, and in those forwards
        self._forward_s_total = 0.0

    # -- the facade (any thread / the event loop) ------------------------------------------------

    def start(self) -> None:
        # grammars compile on this thread, each first proven in a quarter of this stack (grammar_worker.py)
        previous = threading.stack_size(ENGINE_STACK_BYTES)  # read when a thread starts, not when it is made
        try:
            self._thread.start()
        finally:
            threading.stack_size(previous)

    def shutdown(self) -> None:
        self._is_stopping = True
        self._wakeup.set()
        self._thread.join()

    def submit(self, request: GenerationRequest) -> RequestStream:
        """Queue a request (raises at once if it is invalid or the queue is full); stream its events.

        Closing the stream early (a client that went away) aborts the request.
        """
        if request.request_id in self._streams:
            raise InvalidRequest(f"request id {request.request_id!r} is already in use")
        with self.adapters.pinning():
            seq = self._admit(request)
            stream = self._streams.open(seq)
            try:
                self._scheduler.add(seq, retry_after_s=max(1.0, self._last_step_s * self._scheduler.num_waiting))
            except Exception:
                self._streams.forget(request.request_id)
                raise
        self._wakeup.set()
        return stream

    async def open(self, request: GenerationRequest) -> RequestStream:
        """`submit`, as the serving layer calls every engine (a remote one answers asynchronously)."""
        return self.submit(request)

    def abort(self, request_id: str) -> None:
        """Cancel a request; it leaves the batch within one step and its memory is freed."""
        waiting = self._scheduler.abort(request_id)
        if waiting is not None:
            self._emit(waiting, "", FinishReason.ABORT)  # it never ran: nothing for the engine to free
        self._wakeup.set()

    def abort_all(self) -> None:
        """Cancel every waiting and running request (the end of a drain): each ends with `abort`."""
        for request_id in self._scheduler.request_ids():
            self.abort(request_id)

    def is_resident(self, name: str) -> bool:
        return self.adapters.is_resident(name)

    @property
    def is_idle(self) -> bool:
        return not self._scheduler.num_running and not self._scheduler.num_waiting

    @property
    def max_context(self) -> int:
        return self._max_context

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive() and not self._is_stopping

    def stats(self) -> EngineStats:
        residency = self.adapters.residency
        return EngineStats(
            process=f"{socket.gethostname()}:{os.getpid()}",
            num_running=self._scheduler.num_running,
            num_waiting=self._scheduler.num_waiting,
            num_batch_rows=self._runner.num_rows,
            num_generated_tokens=self._num_generated_tokens,
            last_step_s=self._last_step_s,
            running_per_adapter=dict(self._scheduler.running_per_adapter()),
            waiting_per_adapter=dict(self._scheduler.waiting_per_adapter()),
            num_adapters=len(self.adapters.names()),
            num_resident=residency.num_resident,
            resident_adapters=tuple(self.adapters.resident_keys()),
            max_resident=residency.max_resident,
            num_loads=residency.num_loads,
            num_evictions=residency.num_evictions,
            lora_bytes=self._host.lora_bytes,
            load_times=copy.deepcopy(residency.load_times),
            step_s_total=self._step_s_total,
            forward_s_total=self._forward_s_total,
        )

    def replica_stats(self) -> dict[str, EngineStats]:
        """Each engine's figures by replica id: this one alone."""
        return {self.replica_id: self.stats()}

    def _admit(self, request: GenerationRequest) -> Sequence:
        params = request.params
        if not request.prompt_ids:
            raise InvalidRequest("the prompt is empty", param="prompt")
        total = len(request.prompt_ids) + params.max_tokens
        if total > self._max_context:
            raise ContextTooLong(
                f"This model's maximum context length is {self._max_context} tokens. However, you requested "
                f"{total} tokens ({len(request.prompt_ids)} in the prompt, {params.max_tokens} for the "
                "completion). Please reduce the prompt or max_tokens.",
                param="max_tokens",
            )
        tracker = TextTracker(self._decode, params.stop)
        if request.adapter is None:
            if params.sets_knobs:
                raise InvalidRequest(
                    "alpha, omega and strength set how an adapter serves; the base model has none",
                    param="alpha" if params.strength is None else "strength",
                )
            return Sequence(request, knobs=None, tracker=tracker)
        published = self.adapters.resolve(request.adapter)
        knobs = published.adapter.manifest.knobs.served(params.alpha, params.omega, params.strength)
        if knobs is None:  # strength 0: the base model itself, with no adapter rows
            return Sequence(replace(request, adapter=None), knobs=None, tracker=tracker)
        return Sequence(request, knobs=knobs, tracker=tracker, adapter_key=published.key)

    # -- the engine thread -----------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._is_stopping:
            try:
                did_work = self.step()
            except Exception as exc:  # a fault fails the requests in flight, not the server
                log.exception("engine step failed")
                self._fail_all(exc)
                did_work = False
            if not did_work:
                self._wakeup.wait(timeout=0.5)
                self._wakeup.clear()
        stopped = Overloaded("the server is shutting down; retry on another replica", retry_after_s=5)
        self._fail_all(stopped, include_waiting=True)
        self.adapters.fail_pending(stopped)
        self.adapters.residency.shutdown()

    def step(self) -> bool:
        """schedule → run → postprocess; False when there was nothing to do.

        A step decodes every running row and runs one chunk of a joining group's prompts; a new
        group is admitted beside those being prefilled (up to the runner's limit), which take turns.
        """
        step_start = time.perf_counter()
        self.adapters.apply_pending()
        self._load_cold_adapters()
        batch = self._scheduler.schedule(admit=self._runner.can_start_prefill, is_ready=self._is_ready)
        self._finish([seq for seq in batch.decode if seq.is_aborted], FinishReason.ABORT)
        if batch.prefill:
            for seq in batch.prefill:
                if seq.adapter_key is not None:
                    self.adapters.residency.touch(seq.adapter_key)
            self._runner.start_prefill(batch.prefill)
        if not self._runner.num_rows and not self._runner.is_prefilling:
            return False
        picks: list[tuple[Sequence, int | QAdapterError]] = []
        with torch.inference_mode():
            if self._runner.num_rows:
                picks += self._pick(self._timed(self._runner.decode), self._runner.rows)
            first_new_row = self._runner.num_rows
            if self._runner.is_prefilling and (logits := self._timed(self._runner.prefill_chunk)) is not None:
                picks += self._pick(logits, self._runner.rows[first_new_row:])
        self._postprocess(picks)
        self.adapters.free_retired()
        self._last_step_s = time.perf_counter() - step_start
        self._step_s_total += self._last_step_s
        return True

    def _timed(self, forward: Callable[[], T]) -> T:
        """Run a forward, counting its time (to the end of its kernels on a GPU) apart from the step's."""
        start = time.perf_counter()
        result = forward()
        if self._host.device.type == "cuda":
            torch.cuda.synchronize(self._host.device)  # the sampler's .tolist() would wait for it anyway
        self._forward_s_total += time.perf_counter() - start
        return result

    def _load_cold_adapters(self) -> None:
        """Start reading the weights waiting requests need, install those read; a load that failed
        fails the requests waiting for it, and only them."""
        self.adapters.prefetch(self._scheduler.waiting_adapter_keys())  # resident or loading ones: no-ops
        for key, exc in self.adapters.residency.install_ready().items():
            for seq in self._scheduler.take_waiting(lambda s, key=key: s.adapter_key == key):
                self._finish([seq], exc)

    def _is_ready(self, seq: Sequence) -> bool:
        return seq.adapter_key is None or self.adapters.residency.is_resident(seq.adapter_key)

    def _pick(
        self, logits: torch.Tensor, rows: list[tuple[Sequence, str | None]]
    ) -> list[tuple[Sequence, int | QAdapterError]]:
        seqs = sequences_of(rows)
        return list(zip(seqs, self._sampler.pick(seqs, policy_scores(logits, rows, self._stop_token_ids))))

    def _postprocess(self, picks: list[tuple[Sequence, int | QAdapterError]]) -> None:
        for seq, token in picks:
            if isinstance(token, QAdapterError):  # this request alone stops; the batch goes on
                self._finish([seq], token)
                continue
            self._num_generated_tokens += seq.request.params.max_tokens > 0  # a prompt-only request makes none
            text, reason = seq.take(token, self._stop_token_ids)
            if reason is None:
                self._emit(seq, text, None)
            else:
                self._finish([seq], reason, text)

    def _finish(self, seqs: list[Sequence], outcome: FinishReason | Exception, text: str = "") -> None:
        """End these requests, with a reason or an error; their rows leave the batch."""
        self._scheduler.finish(seqs)
        self._runner.remove(seqs)
        for seq in seqs:
            self._sampler.release(seq)
            self._streams.send(seq, outcome if isinstance(outcome, Exception) else seq.event(text, outcome))

    def _fail_all(self, exc: Exception, include_waiting: bool = False) -> None:
        """After a failed step the batch state is unknown: fail every running request, start clean."""
        failed = self._scheduler.take_running() + (self._scheduler.take_waiting() if include_waiting else [])
        self._runner.reset()
        for seq in failed:
            self._sampler.release(seq)
            self._streams.send(seq, exc)
        self.adapters.free_retired()

    def _decode(self, token_ids: list[int]) -> str:
        return self._tokenizer.decode(token_ids, skip_special_tokens=True)

    def _emit(self, seq: Sequence, text: str, reason: FinishReason | None) -> None:
        self._streams.send(seq, seq.event(text, reason))
