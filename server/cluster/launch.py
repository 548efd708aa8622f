"""Cluster mode: `qadapter serve --replicas N` joins (or starts) a Ray cluster, deploys N engine replicas
on Ray Serve, and serves the same FastAPI app in this process as their ingress."""

from __future__ import annotations

import logging
import signal

import ray
from ray import serve

from qadapter.adapters.format import AdapterLimits
from qadapter.adapters.store import AdapterStore
from qadapter.core.model import LoadedModel, load_base_model
from qadapter.core.settings import Settings
from qadapter.server.cluster.hub import HUB_NAME, MetricsHub
from qadapter.server.cluster.remote import RemoteEngine
from qadapter.server.cluster.replica import replica_class
from qadapter.server.cluster.store_view import StoreView

log = logging.getLogger(__name__)
APP_NAME = "qadapter"
NAMESPACE = "qadapter"


class RayEngines:
    """The EngineStarter of cluster mode (see server/app.py)."""

    def __init__(self) -> None:
        self._started_ray = False

    def start(self, settings: Settings) -> tuple[LoadedModel, RemoteEngine]:
        loaded = load_base_model(settings, weights=False)  # the ingress tokenises; the replicas compute
        if not ray.is_initialized():
            self._started_ray = not settings.ray_address
            ours = signal.getsignal(signal.SIGTERM)  # ray.init replaces it with an exit: the drain keeps its own
            ray.init(  # "local": a Ray of our own, even where `ray start` left one running
                address=settings.ray_address or "local",
                namespace=NAMESPACE,
                include_dashboard=False,
                log_to_driver=False,
            )
            signal.signal(signal.SIGTERM, ours)
        serve.start(http_options={"location": "NoServer"})  # requests come through this process's app
        hub = ray.remote(MetricsHub).options(name=HUB_NAME, get_if_exists=True, num_cpus=0).remote()
        deployment = serve.deployment(
            replica_class(settings),
            name="EngineReplica",
            num_replicas=settings.replicas,
            # as many requests as an engine batches and queues: Ray's default (5) would starve batching;
            # past that, --max-waiting more wait in the router, then 503 (BackPressureError), as in one process
            max_ongoing_requests=settings.max_running + settings.max_waiting,
            max_queued_requests=settings.max_waiting,
            ray_actor_options={"num_cpus": settings.replica_cpus, "num_gpus": settings.replica_gpus},
        )
        log.info("deploying %d engine replicas on Ray Serve", settings.replicas)
        replica_settings = settings.model_dump_json(exclude={"api_keys", "admin_key"})  # Ray stores it: no secrets
        handle = serve.run(deployment.bind(replica_settings), name=APP_NAME, route_prefix=None)
        limits = AdapterLimits.of(settings)
        store = StoreView(AdapterStore(settings.adapters_dir, loaded.info, limits), loaded.info, limits)
        max_context = settings.max_context or loaded.model.config.max_position_embeddings
        self._engine = RemoteEngine(handle, store, hub, max_context)
        return loaded, self._engine

    def stop(self) -> None:
        self._engine.close()
        if self._started_ray:  # our own local cluster: stopping Ray stops the replicas with it
            ray.shutdown()
        else:
            serve.delete(APP_NAME)
