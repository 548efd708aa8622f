"""One mapping from our exceptions to OpenAI-shaped errors: {"error": {message, type, param, code}}."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from qadapter.core.errors import (
    AdapterExists,
    AdapterNotFound,
    ContextTooLong,
    Forbidden,
    InvalidAdapter,
    InvalidRequest,
    ModelLoadError,
    Overloaded,
    PayloadTooLarge,
    QAdapterError,
    ReplicaFailed,
    RequestFault,
    RequestTimeout,
    Unauthorized,
)

log = logging.getLogger(__name__)

# exception class → (HTTP status, OpenAI error type); the first matching class wins (most specific first)
_STATUS: list[tuple[type[QAdapterError], int, str]] = [
    (ContextTooLong, 400, "invalid_request_error"),
    (InvalidRequest, 400, "invalid_request_error"),
    (InvalidAdapter, 400, "invalid_request_error"),
    (AdapterNotFound, 404, "invalid_request_error"),
    (Unauthorized, 401, "invalid_request_error"),
    (Forbidden, 403, "invalid_request_error"),
    (AdapterExists, 409, "invalid_request_error"),
    (PayloadTooLarge, 413, "invalid_request_error"),
    (RequestTimeout, 408, "invalid_request_error"),
    (Overloaded, 503, "server_error"),
    (ReplicaFailed, 503, "server_error"),
    (RequestFault, 500, "server_error"),
    (ModelLoadError, 500, "server_error"),
]


def error_body(message: str, error_type: str, code: str | None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def render(exc: Exception) -> tuple[int, dict, dict[str, str]]:
    """(status, body, headers) for any exception; unexpected ones are a 500 that hides internals."""
    if isinstance(exc, QAdapterError):
        status, error_type = next(((s, t) for cls, s, t in _STATUS if isinstance(exc, cls)), (500, "server_error"))
        retry_after_s = (
            exc.retry_after_s if isinstance(exc, Overloaded) else 1 if isinstance(exc, ReplicaFailed) else None
        )
        headers = {} if retry_after_s is None else {"Retry-After": str(max(1, round(retry_after_s)))}
        return status, error_body(str(exc), error_type, exc.code, exc.param), headers
    log.error("internal error", exc_info=exc)
    return (
        500,
        error_body(
            "The server had an internal error; retry, and report it if it persists.", "server_error", "internal_error"
        ),
        {},
    )


def sse_error(exc: Exception) -> str:
    """The in-band error event of a stream that has already started."""
    return f"data: {json.dumps(render(exc)[1])}\n\n"


def install(app: FastAPI) -> None:
    """Route every error the app can raise through `render`, and FastAPI's own ones too."""

    async def on_ours(_: Request, exc: Exception) -> JSONResponse:
        status, body, headers = render(exc)
        return JSONResponse(body, status_code=status, headers=headers)

    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            body = error_body("The request body is not valid JSON.", "invalid_request_error", "invalid_request_error")
            return JSONResponse(body, status_code=400)
        model = exc.body.get("model") if isinstance(exc.body, dict) else None
        serving = getattr(request.app.state, "serving", None)
        if isinstance(model, str) and serving is not None:
            try:  # an unknown model is a 404 before any parameter check, as OpenAI answers
                serving.check_model(model, is_inference=request.url.path.endswith("completions"))
            except AdapterNotFound as not_found:
                return await on_ours(request, not_found)
        location = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(location) or None
        message = f"{param}: {first.get('msg', 'invalid value')}" if param else str(first.get("msg", "invalid request"))
        return JSONResponse(
            error_body(message, "invalid_request_error", "invalid_request_error", param), status_code=400
        )

    async def on_http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request_error")
        return JSONResponse(
            error_body(str(exc.detail), error_type, code), status_code=exc.status_code, headers=exc.headers
        )

    app.add_exception_handler(QAdapterError, on_ours)
    app.add_exception_handler(RequestValidationError, on_validation)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, on_http)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, on_ours)
