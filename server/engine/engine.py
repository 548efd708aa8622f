"""The engine: one thread owns the model and loops schedule → run → postprocess; an async facade."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from adapters.errors import (
    AdapterNotFound,
    ContextTooLong,
    InvalidAdapter,
    InvalidRequest,
    Overloaded,
)
from adapters.format import ValidatedAdapter
from server.config import Settings
from server.engine.detokenize import TextTracker
from server.engine.request import FinishReason, GenerationRequest, Sequence, TokenEvent
from server.engine.residency import Residency
from server.engine.runner import BatchRunner
from server.engine.sampler import Sampler, policy_scores, sequences_of
from server.engine.scheduler import Scheduler, SchedulerLimits
from server.lora import AdapterHost
from server.model import LoadedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadAdapter:
    """Publish an adapter; a new version of a served name replaces it for new requests."""

    adapter: ValidatedAdapter
    version: int = 1


@dataclass(frozen=True)
class PublishedAdapter:
    """The version of an adapter that new requests get."""

    adapter: ValidatedAdapter
    version: int
    load_id: int  # unique per load: a re-uploaded name never reuses a key still pinned

    @property
    def key(self) -> str:
        return f"{self.adapter.name}@{self.version}#{self.load_id}"


@dataclass(frozen=True)
class UnloadAdapter:
    name: str


AdapterChange = LoadAdapter | UnloadAdapter


@dataclass(frozen=True)
class EngineStats:
    """Counters the metrics layer reads."""

    num_running: int
    num_waiting: int
    num_batch_rows: int
    num_generated_tokens: int
    last_step_s: float
    running_per_adapter: dict[str | None, int]
    num_adapters: int  # served (registered) adapters
    num_resident: int  # adapter versions in device memory
    num_loads: int
    num_evictions: int
    lora_bytes: int  # memory of the resident adapters' weights


class RequestStream:
    """The events of one request, in order; closing it (or cancelling its reader) aborts the request."""

    def __init__(self, engine: Engine, request_id: str, events: asyncio.Queue[TokenEvent | Exception]) -> None:
        self._engine = engine
        self._request_id = request_id
        self._events = events
        self._is_done = False

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> TokenEvent:
        if self._is_done:
            raise StopAsyncIteration
        try:
            item = await self._events.get()
        except asyncio.CancelledError:
            await self.aclose()
            raise
        if isinstance(item, Exception):
            self._close()
            raise item
        if item.finish_reason is not None:
            self._close()
        return item

    async def aclose(self) -> None:
        """Abort the request unless it has finished; free its id."""
        if not self._is_done:
            self._engine.abort(self._request_id)
            self._close()

    def _close(self) -> None:
        self._is_done = True
        self._engine._forget(self._request_id)


class Engine:
    """Continuous batching of base and Q-adapter requests; one batched decode forward per step."""

    def __init__(self, loaded: LoadedModel, host: AdapterHost, settings: Settings) -> None:
        self._tokenizer = loaded.tokenizer
        self._stop_token_ids = loaded.stop_token_ids
        self._max_context = settings.max_context or loaded.model.config.max_position_embeddings
        self._host = host
        pad = loaded.tokenizer.pad_token_id
        self._runner = BatchRunner(host, pad if pad is not None else min(self._stop_token_ids))
        self._sampler = Sampler(host.device)
        self._scheduler = Scheduler(
            SchedulerLimits(settings.max_running, settings.max_waiting, settings.max_prefill_tokens)
        )
        self._adapters: dict[str, PublishedAdapter] = {}  # what new requests get, by name
        self._by_key: dict[str, ValidatedAdapter] = {}  # every version a request may still pin
        self.residency = Residency(host, settings.max_resident_adapters, self._scheduler.uses)
        self._retiring: set[str] = set()  # versions (keys) replaced or removed, kept while pinned
        # Held while a request resolves and pins a version, and while a version is retired and freed,
        # so no request can pin a version that is being unloaded.
        self._publish_lock = threading.Lock()
        self._changes: queue.Queue[tuple[AdapterChange, Future[None]]] = queue.Queue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue[TokenEvent | Exception], Sequence]] = {}
        self._wakeup = threading.Event()
        self._is_stopping = False
        self._thread = threading.Thread(target=self._loop, name="qadapter-engine", daemon=True)
        self._num_publishes = 0
        self._num_generated_tokens = 0
        self._last_step_s = 0.0

    # -- the facade (any thread / the event loop) ------------------------------------------------

    def start(self) -> None:
        self._thread.start()

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
        events: asyncio.Queue[TokenEvent | Exception] = asyncio.Queue()
        with self._publish_lock:
            seq = self._admit(request)
            self._streams[request.request_id] = (asyncio.get_running_loop(), events, seq)
            try:
                self._scheduler.add(seq, retry_after_s=max(1.0, self._last_step_s * self._scheduler.num_waiting))
            except Exception:
                del self._streams[request.request_id]
                raise
        self._wakeup.set()
        return RequestStream(self, request.request_id, events)

    def abort(self, request_id: str) -> None:
        """Cancel a request; it leaves the batch within one step and its memory is freed."""
        waiting = self._scheduler.abort(request_id)
        if waiting is not None:
            self._emit(waiting, "", FinishReason.ABORT)  # it never ran: nothing for the engine to free
        self._wakeup.set()

    def apply(self, change: AdapterChange) -> Future[None]:
        """Queue an adapter change; the engine applies it between steps, never during a forward."""
        done: Future[None] = Future()
        self._changes.put((change, done))
        self._wakeup.set()
        return done

    def adapter_names(self) -> list[str]:
        return list(self._adapters)

    def adapter_version(self, name: str) -> int | None:
        published = self._adapters.get(name)
        return None if published is None else published.version

    def published(self, name: str) -> PublishedAdapter | None:
        return self._adapters.get(name)

    @property
    def max_context(self) -> int:
        return self._max_context

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive() and not self._is_stopping

    def stats(self) -> EngineStats:
        return EngineStats(
            num_running=self._scheduler.num_running,
            num_waiting=self._scheduler.num_waiting,
            num_batch_rows=self._runner.num_rows,
            num_generated_tokens=self._num_generated_tokens,
            last_step_s=self._last_step_s,
            running_per_adapter=dict(self._scheduler.running_per_adapter()),
            num_adapters=len(self._adapters),
            num_resident=self.residency.num_resident,
            num_loads=self.residency.num_loads,
            num_evictions=self.residency.num_evictions,
            lora_bytes=self._host.lora_bytes,
        )

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
            return Sequence(request, alpha=1.0, omega=0.0, tracker=tracker)
        published = self._adapters.get(request.adapter)
        if published is None:
            raise AdapterNotFound(f"The model {request.adapter!r} does not exist", param="model")
        manifest = published.adapter.manifest
        alpha = manifest.alpha if params.alpha is None else params.alpha
        omega = manifest.omega if params.omega is None else params.omega
        return Sequence(request, alpha=alpha, omega=omega, tracker=tracker, adapter_key=published.key)

    # -- the engine thread -----------------------------------------------------------------------

    def _forget(self, request_id: str) -> None:
        self._streams.pop(request_id, None)

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
        while not self._changes.empty():
            self._changes.get_nowait()[1].set_exception(stopped)

    def step(self) -> bool:
        """schedule → run → postprocess; False when there was nothing to do."""
        self._apply_changes()
        batch = self._scheduler.schedule()
        self._finish([seq for seq in batch.decode if seq.is_aborted], FinishReason.ABORT)
        if batch.is_empty:
            return False
        start = time.perf_counter()
        picks: list[tuple[Sequence, int]] = []
        batch.prefill = self._make_resident(batch.prefill)
        with torch.inference_mode():
            if self._runner.num_rows:
                picks += self._pick(self._runner.decode(), self._runner.rows)
            if batch.prefill:
                first_new_row = self._runner.num_rows
                logits = self._runner.prefill(batch.prefill)
                picks += self._pick(logits, self._runner.rows[first_new_row:])
        self._postprocess(picks)
        self._free_retired()
        self._last_step_s = time.perf_counter() - start
        return True

    def _make_resident(self, joining: list[Sequence]) -> list[Sequence]:
        """Load the cold adapters joining requests pinned (they wait for it); a load that fails
        fails its own requests only."""
        ready = []
        for seq in joining:
            try:
                if seq.adapter_key is not None:
                    self.residency.ensure(seq.adapter_key, self._by_key[seq.adapter_key])
            except InvalidAdapter as exc:
                self._scheduler.finish([seq])
                self._send(seq, exc)
            else:
                ready.append(seq)
        return ready

    def _pick(self, logits: torch.Tensor, rows: list[tuple[Sequence, str | None]]) -> list[tuple[Sequence, int]]:
        seqs = sequences_of(rows)
        return list(zip(seqs, self._sampler.pick(seqs, policy_scores(logits, rows))))

    def _postprocess(self, picks: list[tuple[Sequence, int]]) -> None:
        for seq, token in picks:
            params = seq.request.params
            seq.output_ids.append(token)
            self._num_generated_tokens += 1
            tracker = seq.tracker
            is_stop_token = token in params.stop_token_ids or (
                token in self._stop_token_ids and not params.ignore_eos
            )
            visible = seq.output_ids[:-1] if is_stop_token else seq.output_ids
            text, hit_stop_string = tracker.update(visible)
            if hit_stop_string:
                self._finish([seq], FinishReason.STOP, text)
            elif is_stop_token:  # text held back as a possible stop-string start is real text now
                self._finish([seq], FinishReason.STOP, text + tracker.flush(visible))
            elif len(seq.output_ids) >= params.max_tokens:
                self._finish([seq], FinishReason.LENGTH, text + tracker.flush(visible))
            else:
                self._emit(seq, text, None)

    def _finish(self, seqs: list[Sequence], reason: FinishReason, text: str = "") -> None:
        if not seqs:
            return
        self._scheduler.finish(seqs)
        self._runner.remove(seqs)
        for seq in seqs:
            self._sampler.release(seq)
            self._emit(seq, text, reason)

    def _apply_changes(self) -> None:
        while not self._changes.empty():
            change, done = self._changes.get_nowait()
            if not done.set_running_or_notify_cancel():
                continue  # its caller gave up before it was applied
            try:
                if isinstance(change, LoadAdapter):
                    current = self._adapters.get(change.adapter.name)
                    if current is not None and change.version <= current.version:
                        raise InvalidAdapter(
                            f"adapter {change.adapter.name!r} version {change.version} is not newer than "
                            f"the served version {current.version}"
                        )
                    self._num_publishes += 1
                    published = PublishedAdapter(change.adapter, change.version, self._num_publishes)
                    self.residency.ensure(published.key, change.adapter)  # off the request path
                    self._by_key[published.key] = change.adapter
                    with self._publish_lock:
                        replaced = self._adapters.get(change.adapter.name)
                        self._adapters[change.adapter.name] = published
                        if replaced is not None:  # running requests finish on the old version
                            self._retiring.add(replaced.key)
                else:  # new requests cannot use it from now; running ones finish on it
                    with self._publish_lock:
                        removed = self._adapters.pop(change.name, None)
                        if removed is None:
                            raise AdapterNotFound(f"The model {change.name!r} does not exist", param="model")
                        self._retiring.add(removed.key)
            except Exception as exc:
                done.set_exception(exc)
            else:
                done.set_result(None)
            self._free_retired()

    def _free_retired(self) -> None:
        """Unload removed adapters that no waiting or running request uses any more."""
        with self._publish_lock:
            for key in [k for k in self._retiring if not self._scheduler.uses(k)]:
                self.residency.drop(key)
                self._retiring.discard(key)
                del self._by_key[key]
            self.residency.trim()

    def _fail_all(self, exc: Exception, include_waiting: bool = False) -> None:
        """After a failed step the batch state is unknown: fail every running request, start clean."""
        failed = self._scheduler.take_running() + (self._scheduler.take_waiting() if include_waiting else [])
        self._runner.reset()
        for seq in failed:
            self._sampler.release(seq)
            self._send(seq, exc)
        self._free_retired()

    def _decode(self, token_ids: list[int]) -> str:
        return self._tokenizer.decode(token_ids, skip_special_tokens=True)

    def _emit(self, seq: Sequence, text: str, reason: FinishReason | None) -> None:
        self._send(
            seq,
            TokenEvent(
                request_id=seq.request_id,
                text=text,
                token_ids=tuple(seq.output_ids[-1:]) if seq.output_ids and reason != FinishReason.ABORT else (),
                num_prompt_tokens=seq.num_prompt_tokens,
                num_generated_tokens=len(seq.output_ids),
                finish_reason=reason,
            ),
        )

    def _send(self, seq: Sequence, item: TokenEvent | Exception) -> None:
        stream = self._streams.get(seq.request_id)
        if stream is None or stream[2] is not seq:
            return  # its caller has gone (and the id may serve a newer request now)
        loop, events, _ = stream
        try:
            loop.call_soon_threadsafe(events.put_nowait, item)
        except RuntimeError:
            pass  # its event loop has closed
