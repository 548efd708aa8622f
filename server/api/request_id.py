"""Every response carries `x-request-id`: the client's own when it sent a usable one (so its logs and
ours meet), else a new one. A pure ASGI middleware: Starlette's BaseHTTPMiddleware hides disconnects."""

from __future__ import annotations

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-request-id"
USABLE = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


class RequestId:
    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        given = next((value for name, value in scope["headers"] if name == HEADER), b"")
        request_id = given if USABLE.fullmatch(given) else uuid.uuid4().hex.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (HEADER, request_id)]
            await send(message)

        await self._app(scope, receive, send_with_id)
