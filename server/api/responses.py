"""OpenAI's response shapes: whole responses, SSE chunks and the model list, from a call's state."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from itertools import accumulate
from typing import Any, Protocol

from qadapter.server.api.tool_stream import ToolCallDeltas
from qadapter.server.api.tools import ToolPlan
from qadapter.server.engine.request import FinishReason, TokenEvent, TokenLogprob


class EventStream(Protocol):
    """What an engine's `open` gives back: its events in order; `aclose` aborts the request."""

    replica: str

    def __aiter__(self) -> AsyncIterator[TokenEvent]: ...

    async def aclose(self) -> None: ...


@dataclass
class Choice:
    """One output choice, backed by one engine request."""

    index: int
    prompt_index: int
    events: EventStream
    text: str = ""
    num_prompt_tokens: int = 0
    num_generated_tokens: int = 0
    finish_reason: FinishReason | None = None
    stamps: list[float] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None  # None: the request did not ask for them
    echo: str | None = None  # the prompt's text, to go before the first output (completions' echo)

    def shown(self, event: TokenEvent) -> TokenEvent:
        """The engine's event as the request asked to see it: with echo, the prompt (and its
        log-probabilities) before the first output."""
        if self.echo is not None:
            event = replace(event, text=self.echo + event.text, logprobs=event.prompt_logprobs + event.logprobs)
            self.echo = None
        return event


@dataclass
class Call:
    """What one HTTP call is doing: its kind, ids, adapter and choices."""

    is_chat: bool
    model: str
    adapter: str | None
    choices: list[Choice]
    include_usage: bool
    started: float = field(default_factory=time.perf_counter)
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    token_text: Callable[[int], str] = str  # a token id's text, for log-probabilities
    tool_plan: ToolPlan | None = None  # a forced tool call: the answer is its arguments

    def logprobs(self, entries: list[TokenLogprob] | None, text_offset: int = 0) -> dict[str, Any] | None:
        """OpenAI's `logprobs` of a choice (or of a chunk's tokens), in the route's shape."""
        if entries is None:
            return None
        if self.is_chat:
            return {"content": [self._chat_logprob(entry) for entry in entries]}
        texts = [self.token_text(entry.token_id) for entry in entries]
        return {
            "tokens": texts,
            "token_logprobs": [entry.logprob for entry in entries],
            "top_logprobs": [
                None if entry.logprob is None else {self.token_text(t): lp for t, lp in entry.top} for entry in entries
            ],
            "text_offset": list(accumulate((len(t) for t in texts[:-1]), initial=text_offset)) if texts else [],
        }

    def _chat_logprob(self, entry: TokenLogprob) -> dict[str, Any]:
        def described(token_id: int, logprob: float) -> dict[str, Any]:
            text = self.token_text(token_id)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

        return {**described(entry.token_id, entry.logprob), "top_logprobs": [described(*top) for top in entry.top]}

    def usage(self) -> dict[str, int]:
        prompts = {c.prompt_index: c.num_prompt_tokens for c in self.choices}
        completion = sum(c.num_generated_tokens for c in self.choices)
        return {
            "prompt_tokens": sum(prompts.values()),
            "completion_tokens": completion,
            "total_tokens": sum(prompts.values()) + completion,
        }


def chunk(
    call: Call, index: int, delta: dict[str, str] | str, reason: str | None, logprobs: dict[str, Any] | None = None
) -> str:
    """One SSE event: a chat delta (a dict) or a completion's text, for the choice at `index`."""
    if call.is_chat:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
    else:
        choice = {"index": index, "text": delta, "logprobs": logprobs, "finish_reason": reason}
    usage = {"usage": None} if call.include_usage else {}
    return sse_data({**_envelope(call, is_chunk=True), "choices": [choice], **usage})


def is_whole_call(call: Call, choice: Choice) -> bool:
    """Whether a choice of a forced tool call ended as a whole call (its grammar ended it, not a stop)."""
    return (
        call.tool_plan is not None
        and choice.finish_reason == FinishReason.STOP
        and call.tool_plan.is_complete(choice.text)
    )


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
    return sse_data({**_envelope(call, is_chunk=True), "choices": [], "usage": call.usage()})


def full_response(call: Call) -> dict[str, Any]:
    """The body of a finished, non-streamed call."""
    choices = []
    for c in call.choices:
        reason = c.finish_reason.value if c.finish_reason else None
        logprobs = call.logprobs(c.logprobs)
        if is_whole_call(call, c):
            message = {"role": "assistant", "content": None, "tool_calls": call.tool_plan.calls(c.text)}
            choices.append({"index": c.index, "message": message, "logprobs": logprobs, "finish_reason": "tool_calls"})
        elif call.is_chat:
            message = {"role": "assistant", "content": c.text}
            choices.append({"index": c.index, "message": message, "logprobs": logprobs, "finish_reason": reason})
        else:
            choices.append({"index": c.index, "text": c.text, "logprobs": logprobs, "finish_reason": reason})
    return {**_envelope(call, is_chunk=False), "choices": choices, "usage": call.usage()}


def model_list(base_id: str, adapters: list[tuple[str, int]]) -> dict[str, Any]:
    """GET /v1/models: the base model, then each adapter (name, version) with the base as `parent`."""
    created = int(time.time())

    def card(model_id: str, parent: str | None) -> dict[str, Any]:
        return {
            "id": model_id,
            "object": "model",
            "created": created,
            "owned_by": "qadapter",
            "root": model_id,
            "parent": parent,
        }

    return {"object": "list", "data": [card(base_id, None), *(card(n, base_id) | {"version": v} for n, v in adapters)]}


def sse_data(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _envelope(call: Call, is_chunk: bool) -> dict[str, Any]:
    kind = ("chat.completion.chunk" if is_chunk else "chat.completion") if call.is_chat else "text_completion"
    return {"id": call.id, "object": kind, "created": call.created, "model": call.model}
