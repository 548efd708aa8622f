"""FastAPI app factory: wires settings, model, engine, adapters, routes and metrics."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from qadapter.adapters.store import AdapterStore
from qadapter.core.lora import AdapterHost
from qadapter.core.model import load_base_model
from qadapter.core.settings import Settings
from qadapter.server.api import admin, errors, openai
from qadapter.server.api.admin_service import AdapterAdmin
from qadapter.server.api.auth import require_api_key
from qadapter.server.api.gate import AdminGate
from qadapter.server.api.metrics import Metrics
from qadapter.server.api.serving import Serving
from qadapter.server.engine.engine import Engine
from qadapter.server.engine.registry import LoadAdapter

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    """The app; the model loads and the engine starts in its lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = load_base_model(settings)
        engine = Engine(loaded, AdapterHost(loaded.model), settings)
        app.state.metrics = Metrics(engine.stats, loaded.info.id)
        engine.adapters.residency.on_load = app.state.metrics.adapter_load.observe
        engine.start()
        try:
            store = AdapterStore(settings.adapters_dir, loaded.info, settings.max_lora_rank)
            if settings.install_adapters is not None:
                installed = store.install_missing(settings.install_adapters)
                log.info("installed %s from %s", installed or "nothing new", settings.install_adapters)
            for stored in store.load_all():  # a broken adapter stops the start, naming it
                engine.adapters.apply(LoadAdapter(stored.adapter, stored.version)).result()
            app.state.engine = engine
            app.state.admin = AdapterAdmin(store, engine, settings.max_upload_bytes)
            app.state.serving = Serving(engine, loaded, settings, app.state.metrics)
            log.info("serving %s with adapters %s", loaded.info.id, engine.adapters.names() or "(none)")
            yield
        finally:
            engine.shutdown()

    app = FastAPI(
        title="qadapter",
        version="0.1.0",
        lifespan=lifespan,
        description="One frozen LLM, many Q-adapters, OpenAI-compatible.",
    )
    app.state.settings = settings
    errors.install(app)
    app.include_router(openai.router)
    app.include_router(admin.router)
    app.add_middleware(AdminGate, settings=settings)

    @app.get("/health", tags=["ops"])
    async def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready", tags=["ops"])
    async def ready(request: Request) -> JSONResponse:
        """Readiness: the model is loaded and the engine loop runs."""
        engine: Engine | None = getattr(request.app.state, "engine", None)
        is_ready = engine is not None and engine.is_running and not request.app.state.serving.is_draining
        return JSONResponse({"status": "ready" if is_ready else "not ready"}, status_code=200 if is_ready else 503)

    @app.get("/metrics", tags=["ops"])
    async def metrics(request: Request) -> Response:
        """Prometheus metrics."""
        if settings.metrics_need_key:
            await require_api_key(request)
        return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
