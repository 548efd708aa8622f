"""Delivery of engine events to the asyncio side: one queue per request, fed from the engine thread."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from qadapter.server.engine.request import Sequence, TokenEvent

Item = TokenEvent | Exception


class RequestStream:
    """The events of one request, in order; closing it (or cancelling its reader) aborts the request."""

    replica: str  # the engine that serves it

    def __init__(
        self,
        request_id: str,
        events: asyncio.Queue[Item],
        abort: Callable[[str], None],
        forget: Callable[[str], None],
        replica: str,
    ) -> None:
        self.replica = replica
        self._request_id = request_id
        self._events = events
        self._abort = abort
        self._forget = forget
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
            self._abort(self._request_id)
            self._close()

    def _close(self) -> None:
        self._is_done = True
        self._forget(self._request_id)


class StreamRegistry:
    """The open streams by request id; `send` is safe from any thread."""

    def __init__(self, abort: Callable[[str], None], replica: str) -> None:
        self._abort = abort
        self._replica = replica
        self._open: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue[Item], Sequence]] = {}

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._open

    def open(self, seq: Sequence) -> RequestStream:
        """A stream for `seq`'s events, read on the running event loop."""
        events: asyncio.Queue[Item] = asyncio.Queue()
        self._open[seq.request_id] = (asyncio.get_running_loop(), events, seq)
        return RequestStream(seq.request_id, events, self._abort, self.forget, self._replica)

    def forget(self, request_id: str) -> None:
        self._open.pop(request_id, None)

    def send(self, seq: Sequence, item: Item) -> None:
        stream = self._open.get(seq.request_id)
        if stream is None or stream[2] is not seq:
            return  # its caller has gone (and the id may serve a newer request now)
        loop, events, _ = stream
        with contextlib.suppress(RuntimeError):  # its event loop has closed
            loop.call_soon_threadsafe(events.put_nowait, item)
