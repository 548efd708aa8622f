"""In front of every route that takes a body (/admin, /v1, the tokenizer routes): the key is checked before any byte of
the body is read, and the body is counted while it streams in (413 at the limit, 408 when it does
not arrive in time) and spooled to disk past 1 MiB, so no request can hold unbounded memory or a
worker for long before its route runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from tempfile import SpooledTemporaryFile
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from qadapter.core.errors import PayloadTooLarge, QAdapterError, RequestTimeout
from qadapter.core.settings import Settings
from qadapter.server.api.admin import ADMIN_PREFIX
from qadapter.server.api.auth import bearer_token, check_admin_token, check_api_token
from qadapter.server.api.errors import render

SPOOL_IN_MEMORY_BYTES = 1 << 20


class RequestGate:
    """ASGI middleware: key first, then a bounded, timed, spooled body (admin uploads and /v1 bodies alike)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self._app = app
        self._settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rule = self._rule(scope)
        if rule is None:
            await self._app(scope, receive, send)
            return
        check_key, limit, what = rule
        try:
            check_key(bearer_token(Request(scope)))
            declared = dict(scope["headers"]).get(b"content-length", b"0")
            if declared.isdigit() and int(declared) > limit:
                raise PayloadTooLarge(f"the {what} is over this server's limit of {limit} bytes")
            body = await _spooled_body(receive, limit, what, self._settings.read_timeout_s)
        except QAdapterError as exc:
            status, payload, headers = render(exc)
            await JSONResponse(payload, status_code=status, headers=headers)(scope, receive, send)
            return
        if body is None:
            return  # the client went away
        await self._app(scope, _replay(body, receive), send)

    def _rule(self, scope: Scope) -> tuple[Callable[[str], None], int, str] | None:
        """(key check, body limit, what the body is) for a request that has a body to guard."""
        if scope["type"] != "http":
            return None
        if scope["path"].startswith(ADMIN_PREFIX):
            return (lambda token: check_admin_token(token, self._settings)), self._settings.max_upload_bytes, "upload"
        if scope["method"] in ("POST", "PUT", "PATCH"):  # /v1/*, /tokenize, /detokenize: every body-reading route
            return (
                (lambda token: check_api_token(token, self._settings)),
                self._settings.max_request_bytes,
                "request body",
            )
        return None


async def _spooled_body(receive: Receive, limit: int, what: str, timeout_s: float) -> SpooledTemporaryFile | None:
    """The whole body, or None when the client went away; raises past `limit` bytes or `timeout_s` seconds."""
    body: SpooledTemporaryFile = SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES)  # noqa: SIM115 (closed by _replay)
    deadline = time.monotonic() + timeout_s
    more = True
    try:
        while more:
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise RequestTimeout(f"the {what} did not arrive within {timeout_s:g} s") from None
            if message["type"] == "http.disconnect":
                body.close()
                return None
            body.write(message.get("body", b""))
            if body.tell() > limit:
                raise PayloadTooLarge(f"the {what} is over this server's limit of {limit} bytes")
            more = message.get("more_body", False)
    except QAdapterError:
        body.close()
        raise
    body.seek(0)
    return body


def _replay(body: SpooledTemporaryFile, receive: Receive) -> Receive:
    """The spooled body as ASGI messages, then the real channel (for disconnects)."""

    async def replayed() -> dict[str, Any]:
        if body.closed:
            return await receive()
        chunk = body.read(SPOOL_IN_MEMORY_BYTES)
        if len(chunk) < SPOOL_IN_MEMORY_BYTES:
            body.close()
            return {"type": "http.request", "body": chunk, "more_body": False}
        return {"type": "http.request", "body": chunk, "more_body": True}

    return replayed  # type: ignore[return-value]
