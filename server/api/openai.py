"""OpenAI-compatible routes: thin handlers over `Serving`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Security
from fastapi.responses import Response

from qadapter.core.errors import Overloaded
from qadapter.server.api.auth import require_api_key
from qadapter.server.api.openapi import api_key_scheme, error_responses
from qadapter.server.api.protocol import ChatCompletionRequest, CompletionRequest
from qadapter.server.api.serving import Serving


def serving(request: Request) -> Serving:
    return request.app.state.serving


async def refuse_while_draining(request: Request) -> None:
    """After SIGTERM, new requests get 503 while running ones finish."""
    if request.app.state.drain.is_draining:
        raise Overloaded("The server is shutting down; retry on another replica.", retry_after_s=5)


# A dependency, not an HTTP middleware: Starlette's BaseHTTPMiddleware hides client disconnects.
# A completion is JSON, or with `stream: true` server-sent events.
POST_RESPONSES = {
    200: {"content": {"application/json": {}, "text/event-stream": {}}},
    **error_responses(400, 401, 404, 408, 413, 500, 503),
}
router = APIRouter(
    prefix="/v1",
    dependencies=[Security(api_key_scheme), Depends(require_api_key), Depends(refuse_while_draining)],
    tags=["openai"],
)


@router.get("/models", responses=error_responses(401, 503))
async def list_models(service: Serving = Depends(serving)) -> dict[str, Any]:
    """The base model and one entry per adapter (`parent` = the base)."""
    return service.models()


@router.get("/models/{model_id:path}", responses=error_responses(401, 404, 503))
async def retrieve_model(model_id: str, service: Serving = Depends(serving)) -> dict[str, Any]:
    """One model: the base model, or an adapter (`parent` = the base)."""
    return service.model(model_id)


@router.post("/completions", responses=POST_RESPONSES)
async def create_completion(body: CompletionRequest, request: Request, service: Serving = Depends(serving)) -> Response:
    """Complete a prompt; `model` picks an adapter by name, or the base model by its id."""
    return await service.completions(body, request)


@router.post("/chat/completions", responses=POST_RESPONSES)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, service: Serving = Depends(serving)
) -> Response:
    """Answer a conversation; `model` picks an adapter by name, or the base model by its id."""
    return await service.chat(body, request)
