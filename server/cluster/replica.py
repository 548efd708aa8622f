"""An engine replica of the cluster: today's Engine with its own copy of the base model, serving each
adapter version that requests name (the multiplexed model id `name@version`), loaded lazily from
the shared store. Ray Serve routes a request to a replica that already holds its version."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import serve

from qadapter.adapters.format import AdapterLimits, validate
from qadapter.adapters.identity import AdapterId
from qadapter.adapters.store import AdapterStore
from qadapter.core.errors import AdapterNotFound, QAdapterError
from qadapter.core.lora import AdapterHost
from qadapter.core.model import load_base_model
from qadapter.core.settings import Settings
from qadapter.server.cluster.hub import HUB_NAME
from qadapter.server.engine.engine import Engine
from qadapter.server.engine.registry import LoadAdapter, UnloadAdapter
from qadapter.server.engine.request import GenerationRequest

log = logging.getLogger(__name__)
HOUSEKEEPING_S = 1.0  # how often a replica reports its figures and drops versions gone from the store


@dataclass(frozen=True)
class ReplicaHello:
    """The first item of every stream a replica answers: who is serving it."""

    replica: str


class AdapterLease:
    """What Ray Serve's multiplexing caches per model id; when it evicts one, the engine lets it go
    (running requests finish on it first)."""

    def __init__(self, engine: Engine, model_id: str) -> None:
        self._engine = engine
        self.model_id = model_id

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # already gone from the store, or the engine stopped
            self._engine.adapters.apply(UnloadAdapter(self.model_id))


class EngineReplica:
    """One replica: an Engine on its own copy of the base model, adapters leased from the shared store."""

    def __init__(self, settings_json: str) -> None:
        self._settings = Settings.model_validate_json(settings_json)
        torch.set_num_threads(max(1, int(self._settings.replica_cpus)))
        replica = serve.get_replica_context().replica_tag
        self._loaded = load_base_model(self._settings)
        self._store = AdapterStore(self._settings.adapters_dir, self._loaded.info, AdapterLimits.of(self._settings))
        host = AdapterHost(
            self._loaded.model, self._settings.max_resident_adapters + 1, self._settings.share_lower_layers
        )
        self._engine = Engine(self._loaded, host, self._settings, replica_id=replica)
        self._engine.start()
        self._hub = ray.get_actor(HUB_NAME)
        self._stopping = threading.Event()
        threading.Thread(target=self._housekeeping, name="qadapter-replica", daemon=True).start()

    async def load_version(self, model_id: str) -> AdapterLease:
        """Publish one stored install (its AdapterId's key, Ray's model id) in this replica's engine."""
        wanted = AdapterId.parse(model_id)
        path = await asyncio.to_thread(self._stored_path, wanted)
        if path is None:  # deleted or replaced since the ingress resolved it
            raise AdapterNotFound.named(wanted.name)
        adapter = await asyncio.to_thread(validate, path, self._loaded.info, AdapterLimits.of(self._settings))
        load = LoadAdapter(adapter, wanted.version, by_key=True)
        if load.id != wanted:  # replaced between the look and the read
            raise AdapterNotFound.named(wanted.name)
        await asyncio.wrap_future(self._engine.adapters.apply(load))
        return AdapterLease(self._engine, model_id)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Any]:
        """The request's events; an error is yielded as an item (it pickles whole), not raised."""
        try:
            if request.adapter is not None:
                await self.load_version(serve.get_multiplexed_model_id())  # a no-op when Ray holds its lease
            stream = self._engine.submit(request)
        except QAdapterError as exc:
            yield exc
            return
        yield ReplicaHello(self._engine.replica_id)
        try:
            async for event in stream:  # a cancelled generator aborts the request (RequestStream)
                yield event
        except QAdapterError as exc:
            yield exc

    def _housekeeping(self) -> None:
        while not self._stopping.wait(HOUSEKEEPING_S):
            try:
                self._hub.report.remote(self._engine.replica_id, self._engine.stats())
                self._free_versions_gone_from_the_store()
            except Exception:  # the next round tries again: this thread must not die
                log.exception("replica housekeeping failed")

    def _free_versions_gone_from_the_store(self) -> None:
        """Unload the versions replaced or deleted in the store (each once no request pins it)."""
        for key in self._engine.adapters.names():  # a replica serves each install by its key
            if self._stored_path(AdapterId.parse(key)) is None:
                self._engine.adapters.apply(UnloadAdapter(key))

    def _stored_path(self, wanted: AdapterId) -> Path | None:
        """The directory of this very install, or None when the store no longer holds it."""
        path = self._store.version_path(wanted.name, wanted.version)
        try:
            return path if path is not None and AdapterId.of(wanted.name, wanted.version, path) == wanted else None
        except FileNotFoundError:  # removed between the two looks
            return None

    def __del__(self) -> None:
        self._stopping.set()
        self._engine.shutdown()


def replica_class(settings: Settings) -> type[EngineReplica]:
    """The replica deployment's class, its `load_version` wrapped in Ray Serve's multiplexing (a cache
    of leases, up to --max-resident-adapters, least recently used out first; the decorator takes a
    constant, hence a class per settings)."""
    multiplexed = serve.multiplexed(max_num_models_per_replica=settings.max_resident_adapters)
    return type("EngineReplica", (EngineReplica,), {"load_version": multiplexed(EngineReplica.load_version)})
