"""Streamed answers: iterators of typed chunks over an open response (sync and async)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Self

import httpx

from qadapter.client import sse
from qadapter.client.errors import ConnectionFailed, translate_transport
from qadapter.client.types import Chunk


class ChunkStream:
    """A streamed answer, an iterator of Chunks. The connection closes at the end, on close() or when
    a `with` block is left; closing early makes the server stop generating."""

    def __init__(self, response: httpx.Response, url: str) -> None:
        self._response = response
        self._chunks = self._read(url)  # held here: a dropped generator would close the stream

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Chunk:
        return next(self._chunks)

    def _read(self, url: str) -> Iterator[Chunk]:
        try:
            with translate_transport(url):
                for line in self._response.iter_lines():
                    chunks = sse.decode(line)
                    if chunks is None:
                        return
                    yield from chunks
            raise _cut_short(url)
        finally:
            self._response.close()

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class AsyncChunkStream:
    """The async twin of ChunkStream: `async for chunk in stream`."""

    def __init__(self, response: httpx.Response, url: str) -> None:
        self._response = response
        self._chunks = self._read(url)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Chunk:
        return await anext(self._chunks)

    async def _read(self, url: str) -> AsyncIterator[Chunk]:
        try:
            with translate_transport(url):
                async for line in self._response.aiter_lines():
                    chunks = sse.decode(line)
                    if chunks is None:
                        return
                    for chunk in chunks:
                        yield chunk
            raise _cut_short(url)
        finally:
            await self._response.aclose()

    async def close(self) -> None:
        await self._response.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()


def _cut_short(url: str) -> ConnectionFailed:
    return ConnectionFailed(f"the stream from {url} ended before the server finished it; retry the request")
