"""The ingress's engine in cluster mode: the same facade as the in-process Engine (`open`, `adapters`,
`stats`, drains), backed by the replicas through a Ray Serve deployment handle.

The shared store is the source of truth for adapters: the ingress resolves a name to its newest
version there, and asks for the multiplexed model id `name@version`, so Ray Serve routes the request
to a replica that already holds that version (or to the least loaded one, which loads it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any, NoReturn

from ray.exceptions import RayError, RayTaskError
from ray.serve.exceptions import BackPressureError, RayServeException, RequestCancelledError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from qadapter.core.errors import Overloaded, ReplicaFailed
from qadapter.server.cluster.replica import ReplicaHello
from qadapter.server.cluster.store_view import StoreView
from qadapter.server.engine.request import FinishReason, GenerationRequest, TokenEvent
from qadapter.server.engine.stats import EngineStats

log = logging.getLogger(__name__)
HUB_POLL_S = 1.0


def is_replica_gone(exc: BaseException) -> bool:
    """Whether Ray says the replica went away (killed, out of memory, its node lost), not that it
    refused or failed the request, nor that we cancelled it."""
    refused = (RayTaskError, BackPressureError, RequestCancelledError)
    return isinstance(exc, (RayError, RayServeException)) and not isinstance(exc, refused)


def translate(exc: BaseException) -> BaseException:
    """What the API layer makes of an error from Ray: the same errors as a single process."""
    if isinstance(exc, BackPressureError):
        return Overloaded("Every engine replica is at capacity; retry shortly.", retry_after_s=1)
    if isinstance(exc, RayTaskError):  # a bug on the replica: a 500 that hides it, as in one process
        log.error("an engine replica failed on a request: %s", exc)
        return RuntimeError("an engine replica failed on a request")
    if is_replica_gone(exc):
        return ReplicaFailed(f"The engine replica serving this request stopped ({type(exc).__name__}); retry it.")
    return exc


def raise_translated(exc: BaseException) -> NoReturn:
    """Raise `exc` as the API layer knows it (the original, when it is not Ray's)."""
    translated = translate(exc)
    if translated is exc:
        raise exc
    raise translated from None


class RemoteStream:
    """A request's events from its replica; `aclose` (or `abort`) cancels it there, and so does a
    reader that goes away (the client left): the replica stops generating for nobody."""

    replica: str

    def __init__(
        self, events: DeploymentResponseGenerator, replica: str, request: GenerationRequest, forget: Any
    ) -> None:
        self.replica = replica
        self._events = events
        self._request = request
        self._forget = forget
        self._aborted = False
        self._done = False
        self._generated = 0

    def __aiter__(self) -> RemoteStream:
        return self

    async def __anext__(self) -> TokenEvent:
        if self._done:
            raise StopAsyncIteration
        if self._aborted:
            return self._end(self._abort_event())
        try:
            item = await anext(self._events)
        except StopAsyncIteration:
            self._end(None)
            raise
        except BaseException as exc:  # cancelled (client gone), or Ray's error
            if self._aborted and isinstance(exc, RequestCancelledError):  # abort(): a drain's deadline
                return self._end(self._abort_event())
            self._events.cancel()
            self._end(None)
            raise_translated(exc)
        if isinstance(item, Exception):
            self._end(None)
            raise item
        self._generated = item.num_generated_tokens
        return self._end(item) if item.finish_reason is not None else item

    def abort(self) -> None:
        """End the request at once: it stops on its replica, and its stream ends with `abort`."""
        if not self._done:
            self._aborted = True
            self._events.cancel()

    async def aclose(self) -> None:
        if not self._done:
            self._events.cancel()
            self._end(None)

    def _abort_event(self) -> TokenEvent:
        prompt = len(self._request.prompt_ids)
        return TokenEvent(self._request.request_id, "", (), prompt, self._generated, FinishReason.ABORT)

    def _end(self, last: TokenEvent | None) -> TokenEvent:
        self._done = True
        self._forget(self)
        return last  # type: ignore[return-value]


class RemoteEngine:
    """What the serving layer and the admin routes use, in cluster mode. Made inside the app's
    lifespan (a running event loop): it polls the metrics hub from then until `close`."""

    adapters: StoreView
    max_context: int

    def __init__(self, handle: DeploymentHandle, store: StoreView, hub: Any, max_context: int) -> None:
        self._handle = handle.options(method_name="generate", stream=True)
        self.adapters = store
        self._hub = hub
        self.max_context = max_context
        self._open: set[RemoteStream] = set()
        self._replica_stats: dict[str, EngineStats] = {}
        self._poller = asyncio.get_running_loop().create_task(self._poll_hub())

    async def open(self, request: GenerationRequest) -> RemoteStream:
        """Send a request to a replica; raise at once what it refuses (so an HTTP error comes before any stream)."""
        model_id = None
        if request.adapter is not None:
            model_id = self.adapters.resolve(request.adapter).key
        remote = dataclasses.replace(request, adapter=model_id)
        for attempt in range(2):  # a replica that died before the request started: the next one takes it
            events = self._handle.options(multiplexed_model_id=model_id or "").remote(remote)
            try:
                first = await anext(events)
            except BaseException as exc:  # cancelled while the replica loads the adapter, or Ray's error
                events.cancel()
                if attempt == 0 and is_replica_gone(exc):
                    continue
                raise_translated(exc)
            break
        if isinstance(first, Exception):
            raise first
        assert isinstance(first, ReplicaHello)
        stream = RemoteStream(events, first.replica, request, self._open.discard)
        self._open.add(stream)
        return stream

    @property
    def is_running(self) -> bool:
        """Ready while some replica reports (its figures reach the hub each second)."""
        return bool(self._replica_stats)

    @property
    def is_idle(self) -> bool:
        return not self._open

    def abort_all(self) -> None:
        for stream in list(self._open):
            stream.abort()

    def replica_stats(self) -> dict[str, EngineStats]:
        return dict(self._replica_stats)

    def close(self) -> None:
        self._poller.cancel()

    def is_resident(self, name: str) -> bool:
        """Whether some replica holds the version of `name` that new requests get."""
        published = self.adapters.published(name)
        return published is not None and any(
            published.key in stats.resident_adapters for stats in self._replica_stats.values()
        )

    async def _poll_hub(self) -> None:
        while True:
            try:
                self._replica_stats = await self._hub.snapshot.remote()
            except Exception as exc:  # the hub restarting: keep the last figures, try again
                log.warning("the metrics hub did not answer (%s); replica figures are stale", exc)
            await asyncio.sleep(HUB_POLL_S)
