"""Translate OpenAI requests to engine requests and engine events back to OpenAI responses and SSE."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from qadapter.core.errors import AdapterNotFound
from qadapter.core.model import LoadedModel
from qadapter.core.settings import Settings
from qadapter.server.api.errors import render
from qadapter.server.api.grammar_guard import GrammarGuard
from qadapter.server.api.metrics import Metrics
from qadapter.server.api.prompts import PromptEncoder
from qadapter.server.api.protocol import ChatCompletionRequest, CompletionRequest, SamplingBody
from qadapter.server.api.responses import Call, Choice, full_response, model_list
from qadapter.server.api.sse import each_event, sse_stream
from qadapter.server.api.structured import requested_grammar
from qadapter.server.api.tools import forced_tool_call
from qadapter.server.engine.interface import ServingEngine
from qadapter.server.engine.request import GenerationRequest

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
            lines = sse_stream(call, lambda status: self._record(call, status))
            return StreamingResponse(lines, media_type="text/event-stream", headers=headers)
        try:
            await _until_done_or_disconnected(_run_to_the_end(call), request)
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
        stop_token_ids = self.prompts.token_ids(body.stop_token_ids or [], "stop_token_ids")
        logit_bias = self.prompts.logit_bias(body.logit_bias or {})
        try:
            for prompt_index, prompt in enumerate(prompts):
                for copy in range(body.n):
                    max_tokens = self._max_tokens(body, len(prompt))
                    params = body.sampling_params(
                        max_tokens, copy, stop_token_ids, logit_bias, grammar and grammar.grammar
                    )
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

    def _max_tokens(self, body: SamplingBody, prompt_len: int) -> int:
        """As vLLM: what the request asks, or what the context leaves capped by the server default."""
        if body.requested_max_tokens is not None:
            return body.requested_max_tokens
        return max(1, min(self._settings.default_max_tokens, self._engine.max_context - prompt_len))

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


async def _run_to_the_end(call: Call) -> None:
    async for _ in each_event(call.choices):
        pass  # each event is taken into its choice; the whole response is made from them


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
