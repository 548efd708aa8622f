"""QAdapterClient and AsyncQAdapterClient: the same calls (built in `calls`), sent sync or async."""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Literal, Self, TypeVar, Unpack, overload

import httpx

from qadapter.client import calls
from qadapter.client.calls import Call, Messages
from qadapter.client.errors import QAdapterClientError, from_response, translate_transport
from qadapter.client.retry import RetryPolicy
from qadapter.client.streams import AsyncChunkStream, ChunkStream
from qadapter.client.types import Adapter, Completion, Model, Sampling

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8000"
log = logging.getLogger(__name__)


class _ClientBase:
    """Configuration and request building shared by both clients."""

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        admin_key: str | None,
        timeout: float,
        max_retries: int,
        backoff_s: float,
    ) -> None:
        self.base_url = (base_url or os.environ.get("QADAPTER_URL") or DEFAULT_URL).rstrip("/")
        if self.base_url.endswith("/v1"):  # what OpenAI's SDK wants; we also reach /admin
            raise ValueError(f"base_url is the server's root, without /v1: {self.base_url.removesuffix('/v1')}")
        self._api_key = api_key if api_key is not None else os.environ.get("QADAPTER_API_KEY")
        self._admin_key = admin_key if admin_key is not None else os.environ.get("QADAPTER_ADMIN_KEY")
        self._retry = RetryPolicy(max_retries=max_retries, backoff_s=backoff_s)
        # A generous read timeout: a long answer on a CPU server takes minutes; connecting does not.
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))

    def _request_args(self, call: Call[Any], stack: ExitStack) -> dict[str, Any]:
        key = self._admin_key if call.is_admin else self._api_key
        return {
            "method": call.method,
            "url": call.path,
            "json": call.json,
            "data": call.data,
            "files": calls.open_uploads(call, stack),
            "headers": {"Authorization": f"Bearer {key}"} if key else {},
        }

    def _retry_wait(self, call: Call[Any], attempt: int, error: QAdapterClientError) -> float | None:
        wait = self._retry.wait_s(attempt, error, call.is_idempotent)
        if wait is not None:
            log.info(
                "%s %s: %s; retry %d of %d in %.2f s",
                call.method,
                call.path,
                error,
                attempt + 1,
                self._retry.max_retries,
                wait,
            )
        return wait


class QAdapterClient(_ClientBase):
    """Client of a qadapter server. Keys default to QADAPTER_API_KEY / QADAPTER_ADMIN_KEY, the URL to
    QADAPTER_URL or http://127.0.0.1:8000 (the server root, not /v1)."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        admin_key: str | None = None,
        timeout: float = 300.0,
        max_retries: int = 2,
        backoff_s: float = 0.5,
    ) -> None:
        super().__init__(base_url, api_key, admin_key, timeout, max_retries, backoff_s)
        self._http = httpx.Client(base_url=self.base_url, timeout=self._timeout)
        self.adapters = Adapters(self)

    @overload
    def complete(
        self, prompt: str | list[str], *, model: str, stream: Literal[False] = False, **sampling: Unpack[Sampling]
    ) -> Completion: ...
    @overload
    def complete(
        self, prompt: str | list[str], *, model: str, stream: Literal[True], **sampling: Unpack[Sampling]
    ) -> ChunkStream: ...
    def complete(
        self, prompt: str | list[str], *, model: str, stream: bool = False, **sampling: Unpack[Sampling]
    ) -> Completion | ChunkStream:
        """Complete a prompt on `model` (an adapter's name, or the base model's id)."""
        call = calls.complete(model, prompt, stream, sampling)
        return self._stream(call) if stream else self._call(call)

    @overload
    def chat(
        self, messages: Messages, *, model: str, stream: Literal[False] = False, **sampling: Unpack[Sampling]
    ) -> Completion: ...
    @overload
    def chat(
        self, messages: Messages, *, model: str, stream: Literal[True], **sampling: Unpack[Sampling]
    ) -> ChunkStream: ...
    def chat(
        self, messages: Messages, *, model: str, stream: bool = False, **sampling: Unpack[Sampling]
    ) -> Completion | ChunkStream:
        """Answer a conversation (a string is one user message) on `model`."""
        call = calls.chat(model, messages, stream, sampling)
        return self._stream(call) if stream else self._call(call)

    def models(self) -> list[Model]:
        """The base model and every adapter."""
        return self._call(calls.models())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, call: Call[T]) -> T:
        return call.parse(self._open(call, stream=False).json())

    def _stream(self, call: Call[Any]) -> ChunkStream:
        return ChunkStream(self._open(call, stream=True), self.base_url)

    def _open(self, call: Call[Any], stream: bool) -> httpx.Response:
        """Send `call`, retrying as the policy says; an error answer raises its typed exception."""
        attempt = 0
        while True:
            try:
                return self._send_once(call, stream)
            except QAdapterClientError as error:
                wait = self._retry_wait(call, attempt, error)
                if wait is None:
                    raise
            time.sleep(wait)
            attempt += 1

    def _send_once(self, call: Call[Any], stream: bool) -> httpx.Response:
        with ExitStack() as stack, translate_transport(self.base_url):
            response = self._http.send(self._http.build_request(**self._request_args(call, stack)), stream=stream)
            if response.is_error:
                response.read()
                response.close()
                raise from_response(response)
        return response


class AsyncQAdapterClient(_ClientBase):
    """The asyncio twin of QAdapterClient: the same calls, awaited; streams are async iterators."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        admin_key: str | None = None,
        timeout: float = 300.0,
        max_retries: int = 2,
        backoff_s: float = 0.5,
    ) -> None:
        super().__init__(base_url, api_key, admin_key, timeout, max_retries, backoff_s)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=self._timeout)
        self.adapters = AsyncAdapters(self)

    @overload
    async def complete(
        self, prompt: str | list[str], *, model: str, stream: Literal[False] = False, **sampling: Unpack[Sampling]
    ) -> Completion: ...
    @overload
    async def complete(
        self, prompt: str | list[str], *, model: str, stream: Literal[True], **sampling: Unpack[Sampling]
    ) -> AsyncChunkStream: ...
    async def complete(
        self, prompt: str | list[str], *, model: str, stream: bool = False, **sampling: Unpack[Sampling]
    ) -> Completion | AsyncChunkStream:
        """Complete a prompt on `model` (an adapter's name, or the base model's id)."""
        call = calls.complete(model, prompt, stream, sampling)
        if stream:
            return await self._stream(call)
        return await self._call(call)

    @overload
    async def chat(
        self, messages: Messages, *, model: str, stream: Literal[False] = False, **sampling: Unpack[Sampling]
    ) -> Completion: ...
    @overload
    async def chat(
        self, messages: Messages, *, model: str, stream: Literal[True], **sampling: Unpack[Sampling]
    ) -> AsyncChunkStream: ...
    async def chat(
        self, messages: Messages, *, model: str, stream: bool = False, **sampling: Unpack[Sampling]
    ) -> Completion | AsyncChunkStream:
        """Answer a conversation (a string is one user message) on `model`."""
        call = calls.chat(model, messages, stream, sampling)
        if stream:
            return await self._stream(call)
        return await self._call(call)

    async def models(self) -> list[Model]:
        """The base model and every adapter."""
        return await self._call(calls.models())

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _call(self, call: Call[T]) -> T:
        return call.parse((await self._open(call, stream=False)).json())

    async def _stream(self, call: Call[Any]) -> AsyncChunkStream:
        return AsyncChunkStream(await self._open(call, stream=True), self.base_url)

    async def _open(self, call: Call[Any], stream: bool) -> httpx.Response:
        """Send `call`, retrying as the policy says; an error answer raises its typed exception."""
        attempt = 0
        while True:
            try:
                return await self._send_once(call, stream)
            except QAdapterClientError as error:
                wait = self._retry_wait(call, attempt, error)
                if wait is None:
                    raise
            await asyncio.sleep(wait)
            attempt += 1

    async def _send_once(self, call: Call[Any], stream: bool) -> httpx.Response:
        with ExitStack() as stack, translate_transport(self.base_url):
            request = self._http.build_request(**self._request_args(call, stack))
            response = await self._http.send(request, stream=stream)
            if response.is_error:
                await response.aread()
                await response.aclose()
                raise from_response(response)
        return response


class Adapters:
    """`client.adapters`: hot-swap adapters on the running server (these calls send the admin key)."""

    def __init__(self, client: QAdapterClient) -> None:
        self._client = client

    def upload(self, path: str | Path, *, name: str | None = None, replace: bool = False) -> Adapter:
        """Upload an adapter directory or a .tar.gz/.zip of one; replace=True publishes a new version."""
        return self._client._call(calls.upload_adapter(path, name, replace))

    def get(self, name: str) -> Adapter:
        return self._client._call(calls.get_adapter(name))

    def delete(self, name: str) -> None:
        """Delete an adapter: new requests get NotFound at once, running ones finish."""
        self._client._call(calls.delete_adapter(name))

    def list(self) -> builtins.list[Adapter]:
        return self._client._call(calls.list_adapters())


class AsyncAdapters:
    """`client.adapters` of the async client."""

    def __init__(self, client: AsyncQAdapterClient) -> None:
        self._client = client

    async def upload(self, path: str | Path, *, name: str | None = None, replace: bool = False) -> Adapter:
        """Upload an adapter directory or a .tar.gz/.zip of one; replace=True publishes a new version."""
        return await self._client._call(calls.upload_adapter(path, name, replace))

    async def get(self, name: str) -> Adapter:
        return await self._client._call(calls.get_adapter(name))

    async def delete(self, name: str) -> None:
        """Delete an adapter: new requests get NotFound at once, running ones finish."""
        await self._client._call(calls.delete_adapter(name))

    async def list(self) -> builtins.list[Adapter]:
        return await self._client._call(calls.list_adapters())
