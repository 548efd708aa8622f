"""Typed exceptions for the server's OpenAI-shaped errors ({"error": {message, type, param, code}})."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx


class QAdapterClientError(Exception):
    """Anything the client raises for a failed call."""


class ConnectionFailed(QAdapterClientError):
    """The server could not be reached, or the connection broke before a complete answer."""


class Timeout(QAdapterClientError):
    """The server did not answer within the client's timeout."""


class APIError(QAdapterClientError):
    """An error answer from the server; `code` and `param` are the server's."""

    def __init__(self, message: str, status: int | None, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.param = param


class BadRequest(APIError):
    """400: a parameter is out of bounds or malformed (`param` names it)."""


class ContextTooLong(BadRequest):
    """400 context_length_exceeded: shorten the prompt or lower max_tokens."""


class Unauthorized(APIError):
    """401: a missing or wrong key."""


class Forbidden(APIError):
    """403: a valid key that may not do this, or the server's admin routes are off."""


class NotFound(APIError):
    """404: no such model, adapter or route."""


class Conflict(APIError):
    """409: an adapter of that name exists already (upload with replace=True)."""


class PayloadTooLarge(APIError):
    """413: the upload is over the server's limit."""


class ServerError(APIError):
    """5xx: the server failed; retry later, and report it if it persists."""


class Overloaded(ServerError):
    """503: the server's queue is full or it is shutting down; retry after `retry_after` seconds."""

    def __init__(
        self,
        message: str,
        status: int | None,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status, code, param)
        self.retry_after = retry_after


# The error code decides first (it also arrives inside streams, without a status), then the status.
_BY_CODE: dict[str, type[APIError]] = {
    "context_length_exceeded": ContextTooLong,
    "model_not_found": NotFound,
    "invalid_api_key": Unauthorized,
    "forbidden": Forbidden,
    "adapter_exists": Conflict,
    "payload_too_large": PayloadTooLarge,
    "overloaded": Overloaded,
}
_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: BadRequest,
    503: Overloaded,
}


def api_error(error: Mapping[str, Any], status: int | None, retry_after: float | None = None) -> APIError:
    """The typed exception for the body of an OpenAI-shaped error (`{"message", "code", ...}`)."""
    code, param = error.get("code"), error.get("param")
    message = str(error.get("message") or f"the server answered HTTP {status}")
    cls = _BY_CODE.get(str(code)) or _BY_STATUS.get(status or 0)
    if cls is None:
        cls = ServerError if status is None or status >= 500 else APIError
    if cls is Overloaded:
        return Overloaded(message, status, code, param, retry_after=retry_after)
    return cls(message, status, code, param)


def from_response(response: httpx.Response) -> APIError:
    """The typed exception for an error response (a proxy's non-JSON body still gets its status)."""
    try:
        error = json.loads(response.content)["error"]
        if not isinstance(error, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        error = {"message": f"the server answered HTTP {response.status_code}: {response.text[:200]}"}
    return api_error(error, response.status_code, _retry_after(response.headers.get("retry-after")))


@contextmanager
def translate_transport(url: str) -> Iterator[None]:
    """Raise ours for httpx's transport errors: a timeout, or a connection that failed or broke."""
    try:
        yield
    except httpx.TimeoutException as exc:
        if isinstance(exc, httpx.ConnectTimeout):  # nothing was sent: as good as refused
            raise _unreachable(url, exc) from exc
        raise Timeout(
            f"no answer from {url} within the timeout; raise timeout= (or --timeout) for long generations"
        ) from exc
    except httpx.TransportError as exc:
        raise _unreachable(url, exc) from exc


def _unreachable(url: str, exc: Exception) -> ConnectionFailed:
    return ConnectionFailed(
        f"could not talk to the server at {url} ({type(exc).__name__}: {exc}); "
        "is it running (`qadapter serve`), and is the URL right?"
    )


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the server sends whole seconds; an HTTP date is ignored)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
