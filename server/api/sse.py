"""Every engine event of a call on one path, and the SSE stream OpenAI clients read, in one state
machine: the role's delta of each chat choice, then each event's chunk as it comes (tool-call deltas
for a forced call), the usage chunk when asked, `[DONE]`; an engine fault ends it with an in-band error."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

from qadapter.server.api.errors import render, sse_error
from qadapter.server.api.responses import Call, Choice, envelope, is_whole_call
from qadapter.server.api.tool_stream import ToolCallDeltas
from qadapter.server.engine.request import TokenEvent


async def each_event(choices: list[Choice]) -> AsyncIterator[tuple[Choice, TokenEvent]]:
    """Each choice's events, in its own order, as they come from its engine stream (a call with n > 1
    or several prompts has one per choice), each taken into its choice first. Ending early (the
    client left, or an engine fault raised here) closes the other streams, which aborts them."""
    streams = {c.index: aiter(c.events) for c in choices}
    pending = {asyncio.ensure_future(anext(streams[c.index])): c for c in choices}
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                choice = pending.pop(task)
                try:
                    event = task.result()
                except StopAsyncIteration:
                    continue
                yield choice, choice.add(event, time.perf_counter())
                if event.finish_reason is None:
                    pending[asyncio.ensure_future(anext(streams[choice.index]))] = choice
    finally:
        for task in pending:
            task.cancel()  # a cancelled read aborts its engine request (RequestStream)
        for choice in choices:
            await choice.events.aclose()


async def sse_stream(call: Call, on_end: Callable[[str], None]) -> AsyncIterator[str]:
    """The call's SSE lines; `on_end` gets the HTTP-style status it ended with (499: the client left)."""
    tool_calls = {c.index: ToolCallDeltas(call.tool_plan) for c in call.choices if call.tool_plan is not None}
    status = "200"
    try:
        if call.is_chat:
            for choice in call.choices:  # the first delta of each choice carries the role
                yield chunk(call, choice.index, {"role": "assistant", "content": ""}, None)
        try:
            async with aclosing(each_event(call.choices)) as events:  # closed at once if the client leaves
                async for choice, event in events:
                    for line in _event_chunks(call, choice, event, tool_calls.get(choice.index)):
                        yield line
        except Exception as exc:
            status = str(render(exc)[0])
            yield sse_error(exc)
        if call.include_usage and status == "200":
            yield usage_chunk(call)
        yield "data: [DONE]\n\n"
    finally:
        client_left = status == "200" and not all(c.finish_reason for c in call.choices)
        on_end("499" if client_left else status)  # an engine fault is a 5xx, not the client


def _event_chunks(call: Call, choice: Choice, event: TokenEvent, deltas: ToolCallDeltas | None) -> list[str]:
    if deltas is not None:  # a forced tool call: its text is the call, streamed as tool-call deltas
        return tool_call_chunks(call, choice, deltas, event)
    reason = event.finish_reason.value if event.finish_reason else None
    if not (event.text or reason or event.logprobs):
        return []
    offset = len(choice.text) - len(event.text)  # where its text starts
    logprobs = call.logprobs(None if choice.logprobs is None else list(event.logprobs), offset)
    content = {"content": event.text} if event.text else {}
    return [chunk(call, choice.index, content if call.is_chat else event.text, reason, logprobs)]


def chunk(
    call: Call, index: int, delta: dict[str, str] | str, reason: str | None, logprobs: dict[str, Any] | None = None
) -> str:
    """One SSE event: a chat delta (a dict) or a completion's text, for the choice at `index`."""
    if call.is_chat:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
    else:
        choice = {"index": index, "text": delta, "logprobs": logprobs, "finish_reason": reason}
    usage = {"usage": None} if call.include_usage else {}
    return sse_data({**envelope(call, is_chunk=True), "choices": [choice], **usage})


def tool_call_chunks(call: Call, choice: Choice, deltas: ToolCallDeltas, event: TokenEvent) -> list[str]:
    """A forced tool call's stream: its deltas as its text comes, then `tool_calls`; a call cut short
    (max_tokens, a stop sequence) ends with its own reason (its text as content when none of it went
    out as a call)."""
    lines = [chunk(call, choice.index, {"tool_calls": [delta]}, None) for delta in deltas.feed(event.text)]
    reason = event.finish_reason
    if is_whole_call(call, choice):
        lines += [chunk(call, choice.index, {"tool_calls": [delta]}, None) for delta in deltas.finish()]
        lines.append(chunk(call, choice.index, {}, "tool_calls"))
    elif reason is not None:
        lines.append(chunk(call, choice.index, {} if deltas.has_started else {"content": choice.text}, reason.value))
    return lines


def usage_chunk(call: Call) -> str:
    """The last SSE event of a stream that asked for usage (`stream_options.include_usage`)."""
    return sse_data({**envelope(call, is_chunk=True), "choices": [], "usage": call.usage()})


def sse_data(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"
