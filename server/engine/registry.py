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
from functools import cached_property

from qadapter.adapters.format import ValidatedAdapter
from qadapter.adapters.identity import AdapterId, InstalledAdapter
from qadapter.core.errors import AdapterNotFound, InvalidAdapter
from qadapter.server.engine.residency import Residency


@dataclass(frozen=True)
class LoadAdapter:
    """Publish an adapter; a new version of a served name replaces it for new requests."""

    adapter: ValidatedAdapter
    version: int = 1
    by_key: bool = False  # requests call it by its key, not its name (a cluster replica: each install its own)

    @cached_property
    def id(self) -> AdapterId:  # read once: it stats the directory
        return AdapterId.of(self.adapter.name, self.version, self.adapter.path)

    @property
    def served_as(self) -> str:
        return self.id.key if self.by_key else self.adapter.name


@dataclass(frozen=True)
class UnloadAdapter:
    name: str


AdapterChange = LoadAdapter | UnloadAdapter


class AdapterRegistry:
    """Changes arrive from any thread (`apply`); the engine thread applies them between steps."""

    def __init__(self, residency: Residency, is_pinned: Callable[[str], bool], wakeup: Callable[[], None]) -> None:
        self.residency = residency
        self._is_pinned = is_pinned
        self._wakeup = wakeup
        self._published: dict[str, InstalledAdapter] = {}  # what new requests get, by name
        self._by_key: dict[str, ValidatedAdapter] = {}  # every version a request may still pin
        self._retiring: set[str] = set()  # versions (keys) replaced or removed, kept while pinned
        # Held while a request resolves and pins a version, and while a version is retired and freed,
        # so no request can pin a version that is being unloaded.
        self._lock = threading.Lock()
        self._changes: queue.Queue[tuple[AdapterChange, Future[None]]] = queue.Queue()

    # -- any thread ----------------------------------------------------------------------------------

    def apply(self, change: AdapterChange) -> Future[None]:
        """Queue a change; the engine applies it between steps, never during a forward."""
        done: Future[None] = Future()
        self._changes.put((change, done))
        self._wakeup()
        return done

    def names(self) -> list[str]:
        return list(self._published)

    def snapshot(self) -> list[InstalledAdapter]:
        """Every served adapter's current version, at one moment."""
        return list(self._published.values())

    def published(self, name: str) -> InstalledAdapter | None:
        return self._published.get(name)

    def resident_keys(self) -> list[str]:
        """The keys of the current versions in device memory."""
        return [p.key for p in list(self._published.values()) if self.residency.is_resident(p.key)]

    def is_resident(self, name: str) -> bool:
        """Whether the version new requests get is in device memory now."""
        published = self._published.get(name)
        return published is not None and self.residency.is_resident(published.key)

    @contextmanager
    def pinning(self) -> Iterator[None]:
        """Hold while a request resolves its adapter and is queued: no version it pins is freed meanwhile."""
        with self._lock:
            yield

    def resolve(self, name: str) -> InstalledAdapter:
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
        if current is not None and current.id == change.id:
            return  # published already (two requests raced to load it)
        if current is not None and change.version <= current.version:
            raise InvalidAdapter(
                f"adapter {name!r} version {change.version} is not newer than the served version {current.version}"
            )
        published = InstalledAdapter(change.adapter, change.id)
        self._retiring.discard(published.key)  # the very install unloaded and loaded again: it stays
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
                raise AdapterNotFound.named(name, param="name")  # only the admin routes unload by name
            self._retiring.add(removed.key)
