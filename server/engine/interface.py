"""What the API needs from an engine and from its adapter catalog, declared once: the engine of a
single process (engine.py) and the cluster's remote engine and store view (server/cluster/) both
are these, member for member (tests/unit/server/engine/test_interfaces.py holds them to it). No torch here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import Future
from typing import Protocol

from qadapter.adapters.identity import InstalledAdapter
from qadapter.server.engine.registry import AdapterChange
from qadapter.server.engine.request import GenerationRequest, TokenEvent
from qadapter.server.engine.stats import EngineStats


class AdapterCatalog(Protocol):
    """The served adapters by name: what `/v1/models` lists and what a request's model resolves to."""

    def names(self) -> list[str]: ...

    def published(self, name: str) -> InstalledAdapter | None: ...

    def snapshot(self) -> list[InstalledAdapter]: ...

    def resolve(self, name: str) -> InstalledAdapter:
        """The adapter new requests get; AdapterNotFound when there is none of that name."""
        ...

    def apply(self, change: AdapterChange) -> Future[None]:
        """Make an admin change visible (done when new requests see it)."""
        ...


class EventStream(Protocol):
    """One request's events; closing it early aborts the request."""

    @property
    def replica(self) -> str: ...

    def __aiter__(self) -> AsyncIterator[TokenEvent]: ...

    async def __anext__(self) -> TokenEvent: ...

    async def aclose(self) -> None: ...


class ServingEngine(Protocol):
    """What serving, the admin routes, metrics and draining use of an engine."""

    @property
    def adapters(self) -> AdapterCatalog: ...

    @property
    def max_context(self) -> int: ...

    @property
    def is_running(self) -> bool: ...

    @property
    def is_idle(self) -> bool: ...

    async def open(self, request: GenerationRequest) -> EventStream:
        """Start a request; raise at once what it refuses (so an HTTP error comes before any stream)."""
        ...

    def is_resident(self, name: str) -> bool:
        """Whether the version of `name` that new requests get is in some engine's memory."""
        ...

    def abort_all(self) -> None: ...

    def replica_stats(self) -> dict[str, EngineStats]: ...
