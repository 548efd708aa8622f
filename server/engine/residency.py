"""Which adapter versions are in device memory: a bounded LRU that never evicts a pinned version."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from qadapter.adapters.format import ValidatedAdapter
from qadapter.core.lora import AdapterHost


class Residency:
    """Loads adapter versions into the host on demand, at most `max_resident` at a time.

    The least recently used version that no waiting or running request pins is evicted to make
    room; when every resident version is pinned the limit is exceeded rather than failing a request.
    """

    def __init__(self, host: AdapterHost, max_resident: int, is_pinned: Callable[[str], bool]) -> None:
        self._host = host
        self._max_resident = max_resident
        self._is_pinned = is_pinned
        self._resident: OrderedDict[str, ValidatedAdapter] = OrderedDict()  # key → adapter, oldest use first
        self.num_loads = 0
        self.num_evictions = 0
        self.on_load: Callable[[float], None] | None = None  # gets each load's seconds (metrics)

    @property
    def num_resident(self) -> int:
        return len(self._resident)

    def is_resident(self, key: str) -> bool:
        return key in self._resident

    def ensure(self, key: str, adapter: ValidatedAdapter) -> None:
        """Make `key` resident (loading it if cold) and mark it most recently used."""
        if key in self._resident:
            self._resident.move_to_end(key)
            return
        self._evict_down_to(self._max_resident - 1)
        start = time.perf_counter()
        self._host.load(key, adapter.read_weights())
        self._resident[key] = adapter
        self.num_loads += 1
        if self.on_load is not None:
            self.on_load(time.perf_counter() - start)

    def drop(self, key: str) -> None:
        """Free a version that will not be used again (replaced or deleted, and unpinned)."""
        if self._resident.pop(key, None) is not None:
            self._host.unload(key)

    def trim(self) -> None:
        """Back within the limit once the versions that pushed past it are no longer pinned."""
        self._evict_down_to(self._max_resident)

    def _evict_down_to(self, count: int) -> None:
        while len(self._resident) > count:
            victim = next((key for key in self._resident if not self._is_pinned(key)), None)
            if victim is None:
                return
            self.drop(victim)
            self.num_evictions += 1
