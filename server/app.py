"""FastAPI app factory: wires settings, model, engine, adapters, routes and metrics."""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from qadapter.adapters.format import AdapterLimits
from qadapter.adapters.store import AdapterStore
from qadapter.core.base import BaseModelInfo
from qadapter.core.lora import AdapterHost
from qadapter.core.model import LoadedModel, load_base_model
from qadapter.core.settings import Settings
from qadapter.server.api import admin, errors, openai, tokens
from qadapter.server.api.admin_service import AdapterAdmin
from qadapter.server.api.auth import require_api_key
from qadapter.server.api.gate import RequestGate
from qadapter.server.api.grammar_guard import GrammarGuard
from qadapter.server.api.metrics import Metrics
from qadapter.server.api.openapi import error_responses, install_openapi
from qadapter.server.api.request_id import RequestId
from qadapter.server.api.serving import Serving
from qadapter.server.draining import Drain
from qadapter.server.engine.engine import Engine
from qadapter.server.engine.interface import ServingEngine
from qadapter.server.engine.registry import LoadAdapter

log = logging.getLogger(__name__)


class LocalEngine:
    """The engine of a single-process server: the model and the engine in this process."""

    def start(self, settings: Settings) -> tuple[LoadedModel, Engine]:
        loaded = load_base_model(settings)
        self._engine = Engine(
            loaded, AdapterHost(loaded.model, settings.max_resident_adapters + 1, settings.share_lower_layers), settings
        )
        self._engine.start()
        return loaded, self._engine

    def stop(self) -> None:
        self._engine.shutdown()


def create_app(settings: Settings, engines: EngineStarter | None = None) -> FastAPI:
    """The app; the model loads and the engine starts in its lifespan (in this process, or the
    replicas of a cluster: one app, one code path, either way)."""
    starter = engines or LocalEngine()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded, engine = starter.start(settings)
        app.state.metrics = Metrics(engine.replica_stats, lambda: len(engine.adapters.names()), loaded.info.id)
        try:
            store = _open_store(settings, loaded.info, engine)
            app.state.engine = engine
            app.state.admin = AdapterAdmin(store, engine, settings.max_upload_bytes)
            grammars = GrammarGuard(loaded.tokenizer, loaded.model.config.vocab_size, settings.grammar_timeout_s)
            app.state.serving = Serving(engine, loaded, settings, app.state.metrics, grammars)
            app.state.drain = Drain(engine, settings.shutdown_timeout_s)
            log.info("serving %s with adapters %s", loaded.info.id, engine.adapters.names() or "(none)")
            yield
        finally:
            if hasattr(app.state, "serving"):
                app.state.serving.close()
            starter.stop()

    app = FastAPI(
        title="qadapter",
        version=importlib.metadata.version("qadapter"),
        lifespan=lifespan,
        description="One frozen LLM, many Q-adapters, OpenAI-compatible.",
    )
    app.state.settings = settings
    errors.install(app)
    app.include_router(openai.router)
    app.include_router(admin.router)
    app.include_router(tokens.router)
    app.add_middleware(RequestGate, settings=settings)
    app.add_middleware(RequestId)  # outermost: the gate's refusals carry the id too
    install_openapi(app)
    _add_ops_routes(app, settings)
    return app


class EngineStarter(Protocol):
    """Starts what serves the requests and gives back the base model (for tokenising) and the engine."""

    def start(self, settings: Settings) -> tuple[LoadedModel, ServingEngine]: ...

    def stop(self) -> None: ...


def _open_store(settings: Settings, base: BaseModelInfo, engine: ServingEngine) -> AdapterStore:
    """The adapter store, with every servable adapter published (broken ones quarantined)."""
    store = AdapterStore(settings.adapters_dir, base, AdapterLimits.of(settings))
    if settings.install_adapters is not None:
        installed = store.install_missing(settings.install_adapters)
        log.info("installed %s from %s", installed or "nothing new", settings.install_adapters)
    for stored in store.load_all():  # broken ones were quarantined: the others serve
        engine.adapters.apply(LoadAdapter(stored.adapter, stored.version)).result()
    return store


def _add_ops_routes(app: FastAPI, settings: Settings) -> None:
    @app.get("/health", tags=["ops"])
    async def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready", tags=["ops"], responses={503: {"description": "Loading, stopped or shutting down"}})
    async def ready(request: Request) -> JSONResponse:
        """Readiness: the model is loaded and the engine loop runs."""
        engine: ServingEngine | None = getattr(request.app.state, "engine", None)
        is_ready = engine is not None and engine.is_running and not request.app.state.drain.is_draining
        return JSONResponse({"status": "ready" if is_ready else "not ready"}, status_code=200 if is_ready else 503)

    @app.get("/version", tags=["ops"])
    async def version() -> dict[str, str]:
        """The server's version (as vLLM's /version)."""
        return {"version": app.version}

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse, responses=error_responses(401))
    async def metrics(request: Request) -> Response:
        """Prometheus metrics (text format; an API key only with QADAPTER_METRICS_NEED_KEY)."""
        if settings.metrics_need_key:
            await require_api_key(request)
        return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
