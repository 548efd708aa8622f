"""Translate OpenAI requests to engine requests and engine events back to OpenAI responses and SSE."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from adapters.errors import InvalidRequest
from server.api.errors import render, sse_error
from server.api.metrics import Metrics
from server.api.protocol import ChatCompletionRequest, CompletionRequest, SamplingBody
from server.config import Settings
from server.engine.engine import Engine
from server.engine.request import (
    FinishReason,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
)
from server.model import LoadedModel

log = logging.getLogger(__name__)
DISCONNECT_POLL_S = 0.25


@dataclass
class _Choice:
    """One output choice, backed by one engine request."""

    index: int
    prompt_index: int
    events: AsyncIterator[TokenEvent]
    text: str = ""
    num_prompt_tokens: int = 0
    num_generated_tokens: int = 0
    finish_reason: FinishReason | None = None
    stamps: list[float] = field(default_factory=list)


@dataclass
class _Call:
    """What one HTTP call is doing: its kind, ids, adapter and choices."""

    is_chat: bool
    model: str
    adapter: str | None
    choices: list[_Choice]
    include_usage: bool
    started: float = field(default_factory=time.perf_counter)
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def usage(self) -> dict[str, int]:
        prompts = {c.prompt_index: c.num_prompt_tokens for c in self.choices}
        completion = sum(c.num_generated_tokens for c in self.choices)
        return {"prompt_tokens": sum(prompts.values()), "completion_tokens": completion,
                "total_tokens": sum(prompts.values()) + completion}


class Serving:
    """The layer between thin routes and the engine."""

    def __init__(self, engine: Engine, loaded: LoadedModel, settings: Settings, metrics: Metrics) -> None:
        self._engine = engine
        self._loaded = loaded
        self._settings = settings
        self._metrics = metrics
        self.is_draining = False  # set on SIGTERM: running requests finish, new ones get 503

    @property
    def base_id(self) -> str:
        return self._loaded.info.id

    def models(self) -> dict[str, Any]:
        created = int(time.time())
        base = {"id": self.base_id, "object": "model", "created": created, "owned_by": "qadapter", "root": self.base_id, "parent": None}
        adapters = [
            {"id": name, "object": "model", "created": created, "owned_by": "qadapter", "root": name,
             "parent": self.base_id, "version": self._engine.adapter_version(name)}
            for name in self._engine.adapter_names()
        ]
        return {"object": "list", "data": [base, *adapters]}

    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        prompts = self._completion_prompts(body.prompt)
        return await self._serve(body, prompts, request, is_chat=False)

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
        rendered = self._loaded.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt = self._loaded.tokenizer(rendered, add_special_tokens=False).input_ids
        return await self._serve(body, [prompt], request, is_chat=True)

    # -- shared flow -----------------------------------------------------------------------------

    async def _serve(self, body: SamplingBody, prompts: list[list[int]], request: Request, is_chat: bool) -> Response:
        adapter = None if body.model == self.base_id else body.model
        ignored = body.refuse_unsupported()
        if ignored:
            log.info("ignoring unknown request fields %s", ignored)
        try:
            call = self._submit(body, prompts, adapter, is_chat)
        except Exception as exc:
            self._metrics.requests.labels(body.model, str(render(exc)[0])).inc()
            raise
        if body.stream:
            return StreamingResponse(self._sse(call), media_type="text/event-stream")
        try:
            await _until_done_or_disconnected(asyncio.gather(*(self._drain(c) for c in call.choices)), request)
        except asyncio.CancelledError:
            self._record(call, "499")  # the client went away
            raise
        except Exception as exc:
            self._record(call, str(render(exc)[0]))
            raise
        self._record(call, "200")
        return JSONResponse(self._full_response(call))

    def _submit(self, body: SamplingBody, prompts: list[list[int]], adapter: str | None, is_chat: bool) -> _Call:
        """Start one engine request per (prompt, n); if one is refused, abort those already started."""
        max_tokens = getattr(body, "max_completion_tokens", None) or body.max_tokens
        call = _Call(is_chat=is_chat, model=body.model, adapter=adapter, choices=[],
                     include_usage=bool(body.stream_options and body.stream_options.include_usage))
        call.id = f"{'chatcmpl' if is_chat else 'cmpl'}-{uuid.uuid4().hex}"
        try:
            for prompt_index, prompt in enumerate(prompts):
                for copy in range(body.n):
                    params = self._params(body, max_tokens, len(prompt), copy)
                    request = GenerationRequest(f"{call.id}-{len(call.choices)}", tuple(prompt), adapter, params)
                    events = self._engine.submit(request)
                    call.choices.append(_Choice(index=len(call.choices), prompt_index=prompt_index, events=events))
        except Exception:
            for choice in call.choices:
                self._engine.abort(f"{call.id}-{choice.index}")
            raise
        return call

    def _params(self, body: SamplingBody, max_tokens: int | None, prompt_len: int, copy: int) -> SamplingParams:
        if max_tokens is None:  # as vLLM: what the context leaves, capped by the server default
            room = self._engine.max_context - prompt_len
            max_tokens = max(1, min(self._settings.default_max_tokens, room))
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=body.top_k or 0,
            seed=None if body.seed is None else body.seed + copy,  # n copies differ, and repeat
            stop=body.stop_strings(),
            stop_token_ids=tuple(body.stop_token_ids or ()),
            ignore_eos=body.ignore_eos,
            alpha=body.alpha,
            omega=body.omega,
        )

    def _completion_prompts(self, prompt: str | list[str] | list[int] | list[list[int]]) -> list[list[int]]:
        tokenizer = self._loaded.tokenizer
        if isinstance(prompt, str):
            prompt = [prompt]
        if not prompt:
            raise InvalidRequest("prompt must not be empty", param="prompt")
        if all(isinstance(p, int) for p in prompt):
            prompts = [list(prompt)]  # type: ignore[arg-type]
        else:
            prompts = [tokenizer(p).input_ids if isinstance(p, str) else list(p) for p in prompt]  # type: ignore[union-attr]
        vocab = self._loaded.model.config.vocab_size
        if any(not 0 <= t < vocab for p in prompts for t in p):
            raise InvalidRequest(f"prompt token ids must be in [0, {vocab})", param="prompt")
        return prompts

    async def _drain(self, choice: _Choice, on_event: Callable[[_Choice, TokenEvent], Awaitable[None]] | None = None) -> None:
        async for event in choice.events:
            choice.stamps.append(time.perf_counter())
            choice.text += event.text
            choice.num_prompt_tokens = event.num_prompt_tokens
            choice.num_generated_tokens = event.num_generated_tokens
            choice.finish_reason = event.finish_reason
            if on_event is not None:
                await on_event(choice, event)

    async def _sse(self, call: _Call) -> AsyncIterator[str]:
        queue: asyncio.Queue[tuple[_Choice, TokenEvent] | Exception | None] = asyncio.Queue()

        async def forward(choice: _Choice, event: TokenEvent) -> None:
            await queue.put((choice, event))

        async def run(choice: _Choice) -> None:
            try:
                await self._drain(choice, forward)
            except Exception as exc:
                await queue.put(exc)

        tasks = [asyncio.ensure_future(run(c)) for c in call.choices]
        status = "200"
        try:
            if call.is_chat:
                for choice in call.choices:  # the first delta of each choice carries the role
                    yield self._chunk(call, choice.index, {"role": "assistant", "content": ""}, None)
            remaining = len(tasks)
            while remaining:
                item = await queue.get()
                if isinstance(item, Exception):
                    status = str(render(item)[0])
                    yield sse_error(item)
                    break
                choice, event = item
                reason = event.finish_reason.value if event.finish_reason else None
                if event.text or reason:
                    content = {"content": event.text} if event.text else {}
                    yield self._chunk(call, choice.index, content if call.is_chat else event.text, reason)
                remaining -= event.finish_reason is not None
            if call.include_usage and status == "200":
                yield _sse_data({**self._envelope(call, chunk=True), "choices": [], "usage": call.usage()})
            yield "data: [DONE]\n\n"
        finally:
            for task in tasks:
                task.cancel()  # a client that went away: its engine requests are aborted
            self._record(call, status if all(c.finish_reason for c in call.choices) else "499")

    def _chunk(self, call: _Call, index: int, delta: dict[str, str] | str, reason: str | None) -> str:
        if call.is_chat:
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": index, "text": delta, "logprobs": None, "finish_reason": reason}
        usage = {"usage": None} if call.include_usage else {}
        return _sse_data({**self._envelope(call, chunk=True), "choices": [choice], **usage})

    def _envelope(self, call: _Call, chunk: bool) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if call.is_chat else "text_completion"
        return {"id": call.id, "object": kind, "created": call.created, "model": call.model}

    def _full_response(self, call: _Call) -> dict[str, Any]:
        choices = []
        for c in call.choices:
            reason = c.finish_reason.value if c.finish_reason else None
            if call.is_chat:
                choices.append({"index": c.index, "message": {"role": "assistant", "content": c.text},
                                "logprobs": None, "finish_reason": reason})
            else:
                choices.append({"index": c.index, "text": c.text, "logprobs": None, "finish_reason": reason})
        return {**self._envelope(call, chunk=False), "choices": choices, "usage": call.usage()}

    def _record(self, call: _Call, status: str) -> None:
        label = call.model
        self._metrics.requests.labels(label, status).inc()
        usage = call.usage()
        self._metrics.prompt_tokens.labels(label).inc(usage["prompt_tokens"])
        self._metrics.generation_tokens.labels(label).inc(usage["completion_tokens"])
        self._metrics.e2e.labels(label).observe(time.perf_counter() - call.started)
        for choice in call.choices:
            if choice.stamps:
                self._metrics.ttft.labels(label).observe(choice.stamps[0] - call.started)
            for earlier, later in zip(choice.stamps, choice.stamps[1:]):
                self._metrics.inter_token.labels(label).observe(later - earlier)


def _sse_data(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


async def _until_done_or_disconnected(work: Awaitable[Any], request: Request) -> Any:
    """Await `work`, cancelling it (which aborts its engine requests) if the client goes away."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise asyncio.CancelledError("client disconnected")
    finally:
        if not task.done():
            task.cancel()
