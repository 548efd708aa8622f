"""FastAPI app factory: wires settings, model, engine, adapters, routes and metrics."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from adapters.errors import InvalidAdapter
from adapters.format import validate
from server.api import errors, openai
from server.api.auth import require_api_key
from server.api.metrics import Metrics
from server.api.serving import Serving
from server.config import Settings
from server.engine.engine import Engine, LoadAdapter
from server.lora import AdapterHost
from server.model import LoadedModel, load_base_model

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    """The app; the model loads and the engine starts in its lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = load_base_model(settings)
        engine = Engine(loaded, AdapterHost(loaded.model), settings)
        engine.start()
        try:
            load_adapter_dir(engine, loaded, settings)
            app.state.engine = engine
            app.state.metrics = Metrics(engine.stats, loaded.info.id)
            app.state.serving = Serving(engine, loaded, settings, app.state.metrics)
            log.info("serving %s with adapters %s", loaded.info.id, engine.adapter_names() or "(none)")
            yield
        finally:
            engine.shutdown()

    app = FastAPI(title="qadapter", version="0.1.0", lifespan=lifespan,
                  description="One frozen LLM, many Q-adapters, OpenAI-compatible.")
    app.state.settings = settings
    errors.install(app)
    app.include_router(openai.router)

    @app.middleware("http")
    async def refuse_while_draining(request: Request, call_next):  # type: ignore[no-untyped-def]
        serving = getattr(request.app.state, "serving", None)
        if serving is not None and serving.is_draining and request.url.path.startswith("/v1/"):
            body = errors.error_body("The server is shutting down; retry on another replica.", "server_error", "shutting_down")
            return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
        return await call_next(request)

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


def load_adapter_dir(engine: Engine, loaded: LoadedModel, settings: Settings) -> None:
    """Load every adapter directory under settings.adapters_dir; a broken one stops the start."""
    root = Path(settings.adapters_dir)
    if not root.is_dir():
        log.info("adapters directory %s does not exist: serving the base model only", root)
        return
    for path in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            engine.apply(LoadAdapter(validate(path, loaded.info, settings.max_lora_rank))).result()
        except InvalidAdapter as exc:
            raise InvalidAdapter(f"cannot serve adapter directory {str(path)!r}: {exc}") from None
