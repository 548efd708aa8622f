"""A call's state (its choices, fed by the engine's events) and OpenAI's whole-response shapes; SSE is sse.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from itertools import accumulate
from typing import Any

from qadapter.server.api.tools import ToolPlan
from qadapter.server.engine.interface import EventStream
from qadapter.server.engine.request import FinishReason, TokenEvent, TokenLogprob


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

    def add(self, event: TokenEvent, now: float) -> TokenEvent:
        """Take the engine's next event (the one place a choice's state grows) and give it back as the
        request asked to see it: with echo, the prompt (and its log-probabilities) before the first output."""
        if self.echo is not None:
            event = replace(event, text=self.echo + event.text, logprobs=event.prompt_logprobs + event.logprobs)
            self.echo = None
        self.stamps.append(now)
        self.text += event.text
        self.num_prompt_tokens = event.num_prompt_tokens
        self.num_generated_tokens = event.num_generated_tokens
        self.finish_reason = event.finish_reason
        if self.logprobs is not None:
            self.logprobs.extend(event.logprobs)
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


def is_whole_call(call: Call, choice: Choice) -> bool:
    """Whether a choice of a forced tool call ended as a whole call (its grammar ended it, not a stop)."""
    return (
        call.tool_plan is not None
        and choice.finish_reason == FinishReason.STOP
        and call.tool_plan.is_complete(choice.text)
    )


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
    return {**envelope(call, is_chunk=False), "choices": choices, "usage": call.usage()}


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


def envelope(call: Call, is_chunk: bool) -> dict[str, Any]:
    kind = ("chat.completion.chunk" if is_chunk else "chat.completion") if call.is_chat else "text_completion"
    return {"id": call.id, "object": kind, "created": call.created, "model": call.model}
