"""Server-sent events of a streamed completion → typed chunks (an in-band error raises)."""

from __future__ import annotations

import json

from qadapter.client.errors import ServerError, api_error
from qadapter.client.types import Chunk, Usage

DONE = "[DONE]"


def decode(line: str) -> list[Chunk] | None:
    """The chunks in one SSE line ([] for blank lines and comments), None at the end of the stream."""
    if not line.startswith("data:"):
        return []
    data = line[len("data:") :].strip()
    if data == DONE:
        return None
    try:
        event = json.loads(data)
    except json.JSONDecodeError:
        raise ServerError(f"the server sent a malformed stream event: {data[:200]!r}", None) from None
    if "error" in event:  # the stream had started (HTTP 200) when the server failed
        raise api_error(event["error"], None)
    chunks = []
    for choice in event.get("choices", ()):
        text = (choice.get("delta") or {}).get("content") if "delta" in choice else choice.get("text")
        if text or choice.get("finish_reason"):
            chunks.append(Chunk(text or "", choice["index"], choice.get("finish_reason")))
    if event.get("usage"):
        chunks.append(Chunk(usage=Usage.from_json(event["usage"])))
    return chunks
