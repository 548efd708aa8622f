"""In front of /admin: the admin key is checked before any byte of the body is read, and the body is
counted while it streams in (413 at the limit) and spooled to disk, not memory."""

from __future__ import annotations

from tempfile import SpooledTemporaryFile
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from qadapter.core.errors import PayloadTooLarge, QAdapterError
from qadapter.core.settings import Settings
from qadapter.server.api.admin import ADMIN_PREFIX
from qadapter.server.api.auth import bearer_token, check_admin_token
from qadapter.server.api.errors import render


class AdminGate:
    """ASGI middleware guarding ADMIN_PREFIX: key first, then a bounded, spooled body."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self._app = app
        self._settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(ADMIN_PREFIX):
            await self._app(scope, receive, send)
            return
        limit = self._settings.max_upload_bytes
        try:
            check_admin_token(bearer_token(Request(scope)), self._settings)
            declared = dict(scope["headers"]).get(b"content-length", b"0")
            if declared.isdigit() and int(declared) > limit:
                raise PayloadTooLarge(f"the upload is over this server's limit of {limit} bytes")
            body = await _spooled_body(receive, limit)
        except QAdapterError as exc:
            status, payload, _ = render(exc)
            await JSONResponse(payload, status_code=status)(scope, receive, send)
            return
        if body is None:
            return  # the client went away
        await self._app(scope, _replay(body, receive), send)


async def _spooled_body(receive: Receive, limit: int) -> SpooledTemporaryFile | None:
    body: SpooledTemporaryFile = SpooledTemporaryFile(max_size=1 << 20)  # noqa: SIM115 (handed on, closed by _replay)
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            body.close()
            return None
        body.write(message.get("body", b""))
        if body.tell() > limit:
            body.close()
            raise PayloadTooLarge(f"the upload is over this server's limit of {limit} bytes")
        more = message.get("more_body", False)
    body.seek(0)
    return body


def _replay(body: SpooledTemporaryFile, receive: Receive) -> Receive:
    """The spooled body as ASGI messages, then the real channel (for disconnects)."""

    async def replayed() -> dict[str, Any]:
        if body.closed:
            return await receive()
        chunk = body.read(1 << 20)
        if len(chunk) < (1 << 20):
            body.close()
            return {"type": "http.request", "body": chunk, "more_body": False}
        return {"type": "http.request", "body": chunk, "more_body": True}

    return replayed  # type: ignore[return-value]
