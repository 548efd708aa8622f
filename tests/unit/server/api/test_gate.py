"""server/api/gate.py, driven as a plain ASGI app: the key is checked before any byte of the body is
read; a body over its limit is a 413 (declared or counted while it streams in); one that does not
arrive in time is a 408; a body that arrives whole reaches the route intact, replayed from its spool."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from qadapter.core.settings import Settings
from qadapter.server.api.admin import ADMIN_PREFIX
from qadapter.server.api.gate import SPOOL_IN_MEMORY_BYTES, RequestGate

Message = dict[str, Any]
KEYS = {"api_keys": "sk-1", "admin_key": "admin"}


@dataclass
class Route:
    """The app behind the gate: reads its whole body (and one message after it), answers 200."""

    calls: int = 0
    chunks: list[bytes] = field(default_factory=list)
    flags: list[bool] = field(default_factory=list)
    after_body: Message | None = None

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Message]], send: Any) -> None:
        self.calls += 1
        if scope["method"] in ("POST", "PUT", "PATCH"):
            more = True
            while more:
                message = await receive()
                self.chunks.append(message["body"])
                self.flags.append(more := message["more_body"])
            self.after_body = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


@dataclass
class Client:
    """The client side: the body's messages (each after `delay_s`), then a disconnect; what came back."""

    messages: list[Message]
    delay_s: float = 0.0
    num_read: int = 0
    sent: list[Message] = field(default_factory=list)

    async def receive(self) -> Message:
        if self.num_read >= len(self.messages):
            await asyncio.sleep(0.01)
            return {"type": "http.disconnect"}
        await asyncio.sleep(self.delay_s)
        self.num_read += 1
        return self.messages[self.num_read - 1]

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int | None:
        return next((m["status"] for m in self.sent if m["type"] == "http.response.start"), None)

    @property
    def error(self) -> dict[str, Any]:
        body = b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")
        return json.loads(body)["error"]


def chunks(*parts: bytes) -> list[Message]:
    return [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]


def scope_of(path: str, method: str = "POST", token: str | None = "sk-1", length: int | None = None) -> dict:
    headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {"type": "http", "method": method, "path": path, "headers": headers, "query_string": b""}


def run(scope: dict, client: Client, **settings: Any) -> Route:
    route = Route()
    gate = RequestGate(route, Settings(**{**KEYS, **settings}))
    asyncio.run(gate(scope, client.receive, client.send))
    return route


@pytest.mark.parametrize(
    ("path", "token", "status", "code"),
    [
        ("/v1/completions", None, 401, "invalid_api_key"),
        ("/v1/completions", "wrong", 401, "invalid_api_key"),
        ("/tokenize", "admin", 401, "invalid_api_key"),
        (ADMIN_PREFIX, None, 401, "invalid_api_key"),
        (ADMIN_PREFIX, "sk-1", 403, "forbidden"),
        (f"{ADMIN_PREFIX}/calm", "wrong", 401, "invalid_api_key"),
    ],
)
def test_a_bad_key_is_refused_before_any_byte_of_the_body_is_read(
    path: str, token: str | None, status: int, code: str
) -> None:
    client = Client(chunks(b'{"model": "m"}'))
    route = run(scope_of(path, token=token, length=14), client)
    assert client.status == status and client.error["code"] == code
    assert client.error["type"] == "invalid_request_error" and set(client.error) == {"message", "type", "param", "code"}
    assert client.num_read == 0 and route.calls == 0


def test_admin_routes_are_forbidden_before_the_body_when_no_admin_key_is_set() -> None:
    client = Client(chunks(b"x" * 100))
    route = run(scope_of(ADMIN_PREFIX, token="anything"), client, admin_key="")
    assert client.status == 403 and "Admin routes are off" in client.error["message"]
    assert client.num_read == 0 and route.calls == 0


def test_a_declared_length_over_the_limit_is_a_413_without_reading_the_body() -> None:
    client = Client(chunks(b"x" * 11))
    route = run(scope_of("/v1/completions", length=11), client, max_request_bytes=10)
    assert client.status == 413 and client.error["code"] == "payload_too_large"
    assert "request body is over this server's limit of 10 bytes" in client.error["message"]
    assert client.num_read == 0 and route.calls == 0


def test_an_upload_is_held_to_the_upload_limit_and_a_v1_body_to_the_request_limit() -> None:
    limits = {"max_request_bytes": 10, "max_upload_bytes": 100}
    upload = Client(chunks(b"x" * 50))
    assert run(scope_of(ADMIN_PREFIX, token="admin", length=50), upload, **limits).calls == 1
    assert upload.status == 200
    too_big = Client(chunks(b"x" * 101))
    run(scope_of(ADMIN_PREFIX, token="admin", length=101), too_big, **limits)
    assert too_big.status == 413 and "upload is over this server's limit of 100 bytes" in too_big.error["message"]
    body = Client(chunks(b"x" * 50))
    run(scope_of("/v1/chat/completions", length=50), body, **limits)
    assert body.status == 413


def test_a_streamed_body_is_a_413_as_soon_as_it_passes_the_limit_and_no_more_is_read() -> None:
    client = Client(chunks(*[b"abcd"] * 10))  # no content-length: counted as it arrives
    route = run(scope_of("/v1/completions"), client, max_request_bytes=10)
    assert client.status == 413 and route.calls == 0
    assert client.num_read == 3  # 12 bytes > 10: the 4th chunk is never read


def test_a_lying_content_length_does_not_lift_the_limit() -> None:
    client = Client(chunks(b"x" * 8, b"x" * 8))
    route = run(scope_of("/v1/completions", length=5), client, max_request_bytes=10)
    assert client.status == 413 and route.calls == 0


def test_a_body_of_exactly_the_limit_reaches_the_route_whole() -> None:
    client = Client(chunks(b"0123", b"4567", b"89"))
    route = run(scope_of("/v1/completions", length=10), client, max_request_bytes=10)
    assert client.status == 200 and route.calls == 1
    assert b"".join(route.chunks) == b"0123456789"


def test_a_body_that_never_arrives_is_a_408_within_the_read_timeout() -> None:
    async def stalled() -> Message:
        await asyncio.sleep(30)
        raise AssertionError("the gate waited past its timeout")

    client = Client([])
    client.receive = stalled  # type: ignore[method-assign]
    route = Route()
    elapsed_s = asyncio.run(_timed(RequestGate(route, Settings(**KEYS, read_timeout_s=0.1)), client))
    assert client.status == 408 and client.error["code"] == "request_timeout"
    assert "did not arrive within 0.1 s" in client.error["message"]
    assert elapsed_s < 2.0 and route.calls == 0


async def _timed(gate: RequestGate, client: Client) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    await gate(scope_of("/v1/completions"), client.receive, client.send)
    return loop.time() - start


def test_a_body_that_trickles_in_is_a_408_even_though_each_chunk_is_prompt() -> None:
    client = Client(chunks(*[b"x"] * 20), delay_s=0.03)  # 0.6 s in all, each chunk well within 0.15 s
    route = run(scope_of("/v1/completions"), client, read_timeout_s=0.15)
    assert client.status == 408 and route.calls == 0
    assert client.num_read < 20


def test_a_client_that_goes_away_mid_body_gets_no_answer_and_the_route_never_runs() -> None:
    client = Client([{"type": "http.request", "body": b"part", "more_body": True}])  # then a disconnect
    route = run(scope_of("/v1/completions"), client)
    assert route.calls == 0 and client.sent == []


def test_a_large_body_is_spooled_and_replayed_intact_in_bounded_chunks_then_the_real_channel() -> None:
    piece = bytes(range(256)) * 256  # 64 KiB
    body = piece * 40  # 2.5 MiB: past the in-memory spool
    client = Client(chunks(*[piece] * 40))
    route = run(scope_of("/v1/completions", length=len(body)), client, max_request_bytes=4 * 2**20)
    assert client.status == 200
    assert b"".join(route.chunks) == body
    assert max(len(c) for c in route.chunks) <= SPOOL_IN_MEMORY_BYTES and len(route.chunks) == 3
    assert route.flags == [True, True, False]
    assert route.after_body == {"type": "http.disconnect"}  # after the replay, the client's own channel


def test_an_empty_body_reaches_the_route_as_one_empty_message() -> None:
    client = Client(chunks(b""))
    route = run(scope_of("/v1/completions", length=0), client)
    assert client.status == 200 and route.chunks == [b""] and route.flags == [False]


def test_bodiless_inference_routes_pass_untouched_but_every_admin_route_is_guarded() -> None:
    for path in ("/v1/models", "/health", "/metrics"):
        client = Client([])
        route = run(scope_of(path, method="GET", token=None), client)
        assert client.status == 200 and route.calls == 1 and client.num_read == 0
    client = Client(chunks(b""))
    route = run(scope_of(ADMIN_PREFIX, method="GET", token=None), client)
    assert client.status == 401 and route.calls == 0
    client = Client(chunks(b""))
    route = run(scope_of(f"{ADMIN_PREFIX}/calm", method="DELETE", token="admin"), client)
    assert client.status == 200 and route.calls == 1


def test_without_configured_inference_keys_a_v1_body_needs_no_key() -> None:
    client = Client(chunks(b"{}"))
    route = run(scope_of("/v1/completions", token=None), client, api_keys="")
    assert client.status == 200 and route.chunks == [b"{}"]


def test_non_http_traffic_passes_straight_through() -> None:
    seen: list[str] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    gate = RequestGate(app, Settings(**KEYS))
    asyncio.run(gate({"type": "lifespan"}, Client([]).receive, Client([]).send))
    assert seen == ["lifespan"]
