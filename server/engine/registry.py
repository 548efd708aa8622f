"""Which adapter versions the engine serves: validated versions are published between steps (and
loaded on the loader thread, now if there is room, else when a request needs them), running
requests pin the version they started with, and a replaced or deleted version is freed once
nothing pins it."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass

from qadapter.adapters.format import ValidatedAdapter
from qadapter.core.errors import AdapterNotFound, InvalidAdapter
from qadapter.server.engine.residency import Residency


@dataclass(frozen=True)
class LoadAdapter:
    """Publish an adapter; a new version of a served name replaces it for new requests."""

    adapter: ValidatedAdapter
    version: int = 1
    name: str | None = None  # what requests call it (default: its manifest's; a cluster replica: name@version)

    @property
    def served_as(self) -> str:
        return self.name or self.adapter.name


@dataclass(frozen=True)
class UnloadAdapter:
    name: str


AdapterChange = LoadAdapter | UnloadAdapter


@dataclass(frozen=True)
class PublishedAdapter:
    """The version of an adapter that new requests get."""

    adapter: ValidatedAdapter
    version: int
    load_id: int  # unique per load: a re-uploaded name never reuses a key still pinned

    @property
    def key(self) -> str:
        return f"{self.adapter.name}@{self.version}#{self.load_id}"


class AdapterRegistry:
    """Changes arrive from any thread (`apply`); the engine thread applies them between steps."""

    def __init__(self, residency: Residency, is_pinned: Callable[[str], bool], wakeup: Callable[[], None]) -> None:
        self.residency = residency
        self._is_pinned = is_pinned
        self._wakeup = wakeup
        self._published: dict[str, PublishedAdapter] = {}  # what new requests get, by name
        self._by_key: dict[str, ValidatedAdapter] = {}  # every version a request may still pin
        self._retiring: set[str] = set()  # versions (keys) replaced or removed, kept while pinned
        # Held while a request resolves and pins a version, and while a version is retired and freed,
        # so no request can pin a version that is being unloaded.
        self._lock = threading.Lock()
        self._changes: queue.Queue[tuple[AdapterChange, Future[None]]] = queue.Queue()
        self._num_loads = 0

    # -- any thread ----------------------------------------------------------------------------------

    def apply(self, change: AdapterChange) -> Future[None]:
        """Queue a change; the engine applies it between steps, never during a forward."""
        done: Future[None] = Future()
        self._changes.put((change, done))
        self._wakeup()
        return done

    def names(self) -> list[str]:
        return list(self._published)

    def snapshot(self) -> list[PublishedAdapter]:
        """Every served adapter's current version, at one moment."""
        return list(self._published.values())

    def published(self, name: str) -> PublishedAdapter | None:
        return self._published.get(name)

    def resident_names(self) -> list[str]:
        """The served names whose current version is in device memory."""
        return [name for name, p in list(self._published.items()) if self.residency.is_resident(p.key)]

    def is_resident(self, name: str) -> bool:
        """Whether the version new requests get is in device memory now."""
        published = self._published.get(name)
        return published is not None and self.residency.is_resident(published.key)

    @contextmanager
    def pinning(self) -> Iterator[None]:
        """Hold while a request resolves its adapter and is queued: no version it pins is freed meanwhile."""
        with self._lock:
            yield

    def resolve(self, name: str) -> PublishedAdapter:
        """The version a new request on `name` pins (call inside `pinning`)."""
        published = self._published.get(name)
        if published is None:
            raise AdapterNotFound.named(name)
        return published

    # -- the engine thread -----------------------------------------------------------------------------

    def prefetch(self, keys: set[str]) -> None:
        """Start loading the cold versions that waiting requests pinned."""
        for key in keys:
            self.residency.prefetch(key, self._by_key[key])

    def apply_pending(self) -> None:
        """Apply every queued change, each resolving its future."""
        while not self._changes.empty():
            change, done = self._changes.get_nowait()
            if not done.set_running_or_notify_cancel():
                continue  # its caller gave up before it was applied
            try:
                if isinstance(change, LoadAdapter):
                    self._load(change)
                else:
                    self._unload(change.name)
            except Exception as exc:
                done.set_exception(exc)
            else:
                done.set_result(None)
            self.free_retired()

    def free_retired(self) -> None:
        """Unload replaced or removed versions that no waiting or running request pins any more."""
        with self._lock:
            for key in [k for k in self._retiring if not self._is_pinned(k)]:
                self.residency.drop(key)
                self._retiring.discard(key)
                del self._by_key[key]
            self.residency.trim()

    def fail_pending(self, exc: Exception) -> None:
        """Refuse every queued change (at shutdown)."""
        while not self._changes.empty():
            self._changes.get_nowait()[1].set_exception(exc)

    def _load(self, change: LoadAdapter) -> None:
        name = change.served_as
        current = self._published.get(name)
        if current is not None and (current.version, current.adapter.path) == (change.version, change.adapter.path):
            return  # published already (two requests raced to load it)
        if current is not None and change.version <= current.version:
            raise InvalidAdapter(
                f"adapter {name!r} version {change.version} is not newer than the served version {current.version}"
            )
        self._num_loads += 1
        published = PublishedAdapter(change.adapter, change.version, self._num_loads)
        self._by_key[published.key] = change.adapter
        if self.residency.has_room:  # warm it while nothing else needs the slot
            self.residency.prefetch(published.key, change.adapter)
        with self._lock:
            replaced = self._published.get(name)
            self._published[name] = published
            if replaced is not None:  # running requests finish on the old version
                self._retiring.add(replaced.key)

    def _unload(self, name: str) -> None:
        with self._lock:  # new requests cannot use it from now; running ones finish on it
            removed = self._published.pop(name, None)
            if removed is None:
                raise AdapterNotFound.named(name)
            self._retiring.add(removed.key)
