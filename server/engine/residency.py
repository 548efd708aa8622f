"""Which adapter versions are in device memory: a bounded LRU that never evicts a pinned version.

Weights are read from disk on a loader thread (into pinned host memory on CUDA); the engine thread
only copies them into a free slot of the LoRA pool, between steps. A request on a cold adapter
waits in the queue for its load; running streams do not wait for it.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from qadapter.adapters.format import ValidatedAdapter
from qadapter.core.errors import InvalidAdapter
from qadapter.core.lora import AdapterHost, LoraWeights
from qadapter.server.engine.stats import Timings

log = logging.getLogger(__name__)
WeightReader = Callable[[ValidatedAdapter], LoraWeights]


class Residency:
    """Loads adapter versions into the host on demand, at most `max_resident` at a time.

    The least recently used version that no waiting or running request pins is evicted to make
    room; when every resident version is pinned the limit is exceeded rather than failing a request.
    """

    def __init__(
        self,
        host: AdapterHost,
        max_resident: int,
        is_pinned: Callable[[str], bool],
        wakeup: Callable[[], None],
        read_weights: WeightReader = ValidatedAdapter.read_weights,
    ) -> None:
        self._host = host
        self.max_resident = max_resident
        self._is_pinned = is_pinned
        self._wakeup = wakeup
        self._read_weights = read_weights
        self._resident: OrderedDict[str, None] = OrderedDict()  # keys, oldest use first
        self._loading: dict[str, tuple[Future[LoraWeights], float]] = {}  # key → (its read, when it began)
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qadapter-loader")
        self.num_loads = 0
        self.num_evictions = 0
        self.max_install_s = 0.0  # the longest a load held the engine thread (its copy into a slot)
        self.load_times = Timings()
        self.on_load: Callable[[float], None] | None = None  # gets each load's seconds (benchmarks)

    @property
    def num_resident(self) -> int:
        return len(self._resident)

    @property
    def num_loading(self) -> int:
        return len(self._loading)

    @property
    def has_room(self) -> bool:
        return len(self._resident) + len(self._loading) < self.max_resident

    def is_resident(self, key: str) -> bool:
        return key in self._resident

    def prefetch(self, key: str, adapter: ValidatedAdapter) -> None:
        """Start reading a cold version's weights on the loader thread (no-op when resident or loading)."""
        if key in self._resident or key in self._loading:
            return
        read = self._loader.submit(self._read, adapter)
        read.add_done_callback(lambda _: self._wakeup())  # the engine installs it at its next step
        self._loading[key] = (read, time.perf_counter())

    def install_ready(self) -> dict[str, Exception]:
        """Copy every finished read into a slot (engine thread); return the keys whose load failed."""
        failed: dict[str, Exception] = {}
        for key, (read, started) in list(self._loading.items()):
            if not read.done():
                continue
            del self._loading[key]
            try:
                weights = read.result()
                self._evict_down_to(self.max_resident - 1)
                installing = time.perf_counter()
                self._host.load(key, weights)
                self.max_install_s = max(self.max_install_s, time.perf_counter() - installing)
            except InvalidAdapter as exc:
                failed[key] = exc
                continue
            self._resident[key] = None
            self.num_loads += 1
            self.load_times.observe(time.perf_counter() - started)
            if self.on_load is not None:
                self.on_load(time.perf_counter() - started)
        return failed

    def touch(self, key: str) -> None:
        """Mark a resident version most recently used."""
        self._resident.move_to_end(key)

    def drop(self, key: str) -> None:
        """Free a version that will not be used again (replaced or deleted, and unpinned)."""
        loading = self._loading.pop(key, None)
        if loading is not None:
            loading[0].cancel()
        if self._resident.pop(key, 0) is None:
            self._host.unload(key)

    def trim(self) -> None:
        """Back within the limit once the versions that pushed past it are no longer pinned."""
        self._evict_down_to(self.max_resident)

    def shutdown(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)

    def _read(self, adapter: ValidatedAdapter) -> LoraWeights:
        weights = self._read_weights(adapter)
        return weights.pinned() if self._host.device.type == "cuda" else weights

    def _evict_down_to(self, count: int) -> None:
        while len(self._resident) > count:
            victim = next((key for key in self._resident if not self._is_pinned(key)), None)
            if victim is None:
                return
            self.drop(victim)
            self.num_evictions += 1
