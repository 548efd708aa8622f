"""Python client for a qadapter server: chat and completions (streamed or not) on any adapter, and
adapter uploads. It depends on httpx only (no torch)."""

from qadapter.client.client import Adapters, AsyncAdapters, AsyncQAdapterClient, QAdapterClient
from qadapter.client.errors import (
    APIError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    ContextTooLong,
    Forbidden,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    QAdapterClientError,
    ServerError,
    Timeout,
    Unauthorized,
)
from qadapter.client.streams import AsyncChunkStream, ChunkStream
from qadapter.client.types import Adapter, Choice, Chunk, Completion, Model, Sampling, Usage

__all__ = [
    "APIError",
    "Adapter",
    "Adapters",
    "AsyncAdapters",
    "AsyncChunkStream",
    "AsyncQAdapterClient",
    "BadRequest",
    "Choice",
    "Chunk",
    "ChunkStream",
    "Completion",
    "Conflict",
    "ConnectionFailed",
    "ContextTooLong",
    "Forbidden",
    "Model",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "QAdapterClient",
    "QAdapterClientError",
    "Sampling",
    "ServerError",
    "Timeout",
    "Unauthorized",
    "Usage",
]
