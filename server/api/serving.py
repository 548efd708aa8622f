"""Translate OpenAI requests to engine requests and engine events back to OpenAI responses and SSE."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from qadapter.core.errors import AdapterNotFound
from qadapter.core.model import LoadedModel
from qadapter.core.settings import Settings
from qadapter.server.api.errors import render, sse_error
from qadapter.server.api.grammar_guard import GrammarGuard
from qadapter.server.api.metrics import Metrics
from qadapter.server.api.prompts import PromptEncoder
from qadapter.server.api.protocol import ChatCompletionRequest, CompletionRequest, SamplingBody
from qadapter.server.api.responses import (
    Call,
    Choice,
    chunk,
    full_response,
    model_list,
    tool_call_chunks,
    usage_chunk,
)
from qadapter.server.api.structured import requested_grammar
from qadapter.server.api.tool_stream import ToolCallDeltas
from qadapter.server.api.tools import forced_tool_call
from qadapter.server.engine.interface import ServingEngine
from qadapter.server.engine.request import GenerationRequest, SamplingParams, TokenEvent

log = logging.getLogger(__name__)
DISCONNECT_POLL_S = 0.25
UNKNOWN_MODEL_LABEL = "(unknown)"
HEADER_SAFE = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # field names that may go into a response header


class Serving:
    """The layer between thin routes and the engine."""

    def __init__(
        self, engine: ServingEngine, loaded: LoadedModel, settings: Settings, metrics: Metrics, grammars: GrammarGuard
    ) -> None:
        self._engine = engine
        self._loaded = loaded
        self._settings = settings
        self._metrics = metrics
        self._grammars = grammars
        self.prompts = PromptEncoder(loaded, engine.max_context)
        self.is_draining = False  # set on SIGTERM: running requests finish, new ones get 503

    def close(self) -> None:
        """Stop what serving runs beside the engine (the grammar check's process)."""
        self._grammars.close()

    @property
    def base_id(self) -> str:
        return self._loaded.info.id

    @property
    def max_context(self) -> int:
        return self._engine.max_context

    @property
    def tokenizer(self) -> Any:
        return self._loaded.tokenizer

    def models(self) -> dict[str, Any]:
        return model_list(self.base_id, [(p.adapter.name, p.version) for p in self._engine.adapters.snapshot()])

    def model(self, model_id: str) -> dict[str, Any]:
        """One entry of `models()`; an unknown id is a 404."""
        self.check_model(model_id)
        return next(card for card in self.models()["data"] if card["id"] == model_id)

    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        self.check_model(body.model, is_inference=True)
        prompts = await self.prompts.completion(body.prompt)
        echoes = await self.prompts.texts(body.prompt, prompts) if body.echo else None
        return await self._serve(body, prompts, request, is_chat=False, echoes=echoes)

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        self.check_model(body.model, is_inference=True)
        prompt = await self.prompts.chat(body.conversation())
        return await self._serve(body, [prompt], request, is_chat=True)

    def check_model(self, model: str, is_inference: bool = False) -> None:
        """An unknown model is a 404 before any work on the prompt (the engine checks again on submit)."""
        if model != self.base_id and self._engine.adapters.published(model) is None:
            if is_inference:
                self._metrics.requests.labels(UNKNOWN_MODEL_LABEL, "404").inc()
            raise AdapterNotFound.named(model)

    # -- shared flow -----------------------------------------------------------------------------

    async def _serve(
        self,
        body: SamplingBody,
        prompts: list[list[int]],
        request: Request,
        is_chat: bool,
        echoes: list[str] | None = None,
    ) -> Response:
        adapter = None if body.model == self.base_id else body.model
        ignored = body.refuse_unsupported()
        if ignored:
            log.info("ignoring unknown request fields %s", ignored)
        try:
            call = await self._submit(body, prompts, adapter, is_chat, echoes)
        except Exception as exc:
            self._metrics.requests.labels(self._label(body.model), str(render(exc)[0])).inc()
            raise
        headers = {"x-qadapter-replica": ",".join(sorted({c.events.replica for c in call.choices}))}
        if ignored:  # as vLLM, unknown fields are ignored; the client can see which
            headers["x-qadapter-ignored-fields"] = ",".join(n for n in ignored[:32] if HEADER_SAFE.fullmatch(n))
        if body.stream:
            return StreamingResponse(self._sse(call), media_type="text/event-stream", headers=headers)
        try:
            await _until_done_or_disconnected(asyncio.gather(*(self._drain(c) for c in call.choices)), request)
        except asyncio.CancelledError:
            self._record(call, "499")  # the client went away
            raise
        except Exception as exc:
            self._record(call, str(render(exc)[0]))
            raise
        self._record(call, "200")
        return JSONResponse(full_response(call), headers=headers)

    async def _submit(
        self, body: SamplingBody, prompts: list[list[int]], adapter: str | None, is_chat: bool, echoes: list[str] | None
    ) -> Call:
        """Start one engine request per (prompt, n); if one is refused, close those already started."""
        max_tokens = getattr(body, "max_completion_tokens", None) or body.max_tokens
        forced = forced_tool_call(body)
        call = Call(
            is_chat=is_chat,
            model=body.model,
            adapter=adapter,
            choices=[],
            include_usage=bool(body.stream_options and body.stream_options.include_usage),
            token_text=lambda token_id: self.tokenizer.decode([token_id]),
            tool_plan=None if forced is None else forced[0],
        )
        wants_logprobs = body.num_logprobs() is not None
        grammar = await requested_grammar(body, forced, self._grammars)
        call.id = f"{'chatcmpl' if is_chat else 'cmpl'}-{uuid.uuid4().hex}"
        try:
            for prompt_index, prompt in enumerate(prompts):
                for copy in range(body.n):
                    params = self._params(body, max_tokens, len(prompt), copy, grammar and grammar.grammar)
                    request = GenerationRequest(f"{call.id}-{len(call.choices)}", tuple(prompt), adapter, params)
                    events = await self._engine.open(request)
                    choice = Choice(len(call.choices), prompt_index, events, logprobs=[] if wants_logprobs else None)
                    choice.echo = None if echoes is None else echoes[prompt_index]
                    call.choices.append(choice)
        except BaseException:
            for choice in call.choices:
                await choice.events.aclose()
            raise
        return call

    def _params(
        self, body: SamplingBody, max_tokens: int | None, prompt_len: int, copy: int, grammar: str | None
    ) -> SamplingParams:
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
            stop_token_ids=self.prompts.token_ids(body.stop_token_ids or [], "stop_token_ids"),
            ignore_eos=body.ignore_eos,
            alpha=body.alpha,
            omega=body.omega,
            strength=body.strength,
            repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
            frequency_penalty=body.frequency_penalty or 0.0,
            presence_penalty=body.presence_penalty or 0.0,
            logit_bias=self.prompts.logit_bias(body.logit_bias or {}),
            min_tokens=body.min_tokens or 0,
            logprobs=body.num_logprobs(),
            prompt_logprobs=body.num_logprobs() if getattr(body, "echo", False) else None,
            grammar=grammar,
        )

    async def _drain(
        self, choice: Choice, on_event: Callable[[Choice, TokenEvent], Awaitable[None]] | None = None
    ) -> None:
        async for engine_event in choice.events:
            event = choice.shown(engine_event)
            choice.stamps.append(time.perf_counter())
            choice.text += event.text
            choice.num_prompt_tokens = event.num_prompt_tokens
            choice.num_generated_tokens = event.num_generated_tokens
            choice.finish_reason = event.finish_reason
            if choice.logprobs is not None:
                choice.logprobs.extend(event.logprobs)
            if on_event is not None:
                await on_event(choice, event)

    async def _sse(self, call: Call) -> AsyncIterator[str]:
        queue: asyncio.Queue[tuple[Choice, TokenEvent, int] | Exception | None] = asyncio.Queue()

        async def forward(choice: Choice, event: TokenEvent) -> None:
            await queue.put((choice, event, len(choice.text) - len(event.text)))  # where its text starts

        async def run(choice: Choice) -> None:
            try:
                await self._drain(choice, forward)
            except Exception as exc:
                await queue.put(exc)

        tasks = [asyncio.ensure_future(run(c)) for c in call.choices]
        tool_calls = {c.index: ToolCallDeltas(call.tool_plan) for c in call.choices if call.tool_plan is not None}
        status = "200"
        try:
            if call.is_chat:
                for choice in call.choices:  # the first delta of each choice carries the role
                    yield chunk(call, choice.index, {"role": "assistant", "content": ""}, None)
            remaining = len(tasks)
            while remaining:
                item = await queue.get()
                if isinstance(item, Exception):
                    status = str(render(item)[0])
                    yield sse_error(item)
                    break
                choice, event, offset = item
                reason = event.finish_reason.value if event.finish_reason else None
                if call.tool_plan is not None:  # its text is the call: streamed as tool-call deltas
                    for line in tool_call_chunks(call, choice, tool_calls[choice.index], event):
                        yield line
                elif event.text or reason or event.logprobs:
                    content = {"content": event.text} if event.text else {}
                    logprobs = call.logprobs(None if choice.logprobs is None else list(event.logprobs), offset)
                    yield chunk(call, choice.index, content if call.is_chat else event.text, reason, logprobs)
                remaining -= event.finish_reason is not None
            if call.include_usage and status == "200":
                yield usage_chunk(call)
            yield "data: [DONE]\n\n"
        finally:
            for task in tasks:
                task.cancel()  # a client that went away: its engine requests are aborted
            client_left = status == "200" and not all(c.finish_reason for c in call.choices)
            self._record(call, "499" if client_left else status)  # an engine fault is a 5xx, not the client

    def _label(self, model: str) -> str:
        """The metrics label of a requested model: its name when it is served, else one shared label,
        so that arbitrary model strings cannot grow /metrics without bound."""
        return model if model == self.base_id or self._engine.adapters.published(model) else UNKNOWN_MODEL_LABEL

    def _record(self, call: Call, status: str) -> None:
        label = self._label(call.model)
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
