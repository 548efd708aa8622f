"""What /openapi.json says about errors and keys: every route documents the statuses it can answer
with OpenAI's error body, the bearer schemes it needs, and nothing it never answers (FastAPI's 422:
this server's validation errors are 400s)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.security import HTTPBearer
from pydantic import BaseModel

# Declaring these as dependencies documents the schemes; the keys themselves are checked by auth.py.
api_key_scheme = HTTPBearer(scheme_name="ApiKey", description="An inference key (--api-keys)", auto_error=False)
admin_key_scheme = HTTPBearer(scheme_name="AdminKey", description="The admin key (--admin-key)", auto_error=False)

_WHY = {
    400: "A bad parameter or body (`param` names it), or prompt + max_tokens over the context",
    401: "A missing or wrong key",
    403: "An inference key on an admin route, or the admin routes are off",
    404: "An unknown model or adapter",
    408: "The request body did not arrive in time",
    409: "The adapter exists (replace it with PUT)",
    413: "The body is over the server's limit",
    500: "The server, or this one request, failed",
    503: "The queue is full or the server is shutting down (see Retry-After)",
}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error shape."""

    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route that can answer these error statuses."""
    return {status: {"model": ErrorResponse, "description": _WHY[status]} for status in statuses}


def install_openapi(app: FastAPI) -> None:
    """Serve the schema FastAPI makes, less the 422 responses it adds to every route with a body."""

    def schema() -> dict[str, Any]:
        if app.openapi_schema is None:
            made = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for operations in made.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            for unused in ("HTTPValidationError", "ValidationError"):
                made.get("components", {}).get("schemas", {}).pop(unused, None)
            app.openapi_schema = made
        return app.openapi_schema

    app.openapi = schema  # type: ignore[method-assign]
