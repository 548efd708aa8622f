"""server/api/protocol.py, the one door: every bad sampling value in a request body is refused by
name before any engine work, and a good body becomes the engine's parameters in one step."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from qadapter.core.errors import InvalidRequest
from qadapter.server.api.protocol import ChatCompletionRequest, CompletionRequest, SamplingBody
from qadapter.server.engine.request import SamplingParams

CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
COMPLETION = {"model": "m", "prompt": "Hi"}


def body(route: type[SamplingBody], fields: dict[str, Any]) -> SamplingBody:
    """Parsed as the HTTP route parses it: from JSON text, strictly."""
    start = CHAT if route is ChatCompletionRequest else COMPLETION
    return route.model_validate_json(json.dumps({**start, **fields}))


def engine_params(request: SamplingBody, max_tokens: int = 8, copy: int = 0) -> SamplingParams:
    request.refuse_unsupported()
    return request.sampling_params(max_tokens, copy, (), (), None)


def refused_param(route: type[BaseModel], fields: dict[str, Any], max_tokens: int = 8) -> str | None:
    try:
        engine_params(body(route, fields), max_tokens)  # type: ignore[arg-type]
    except ValidationError as exc:
        return str(exc.errors()[0]["loc"][0])
    except InvalidRequest as exc:
        return exc.param
    return None


@pytest.mark.parametrize("route", [ChatCompletionRequest, CompletionRequest])
@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_tokens": -1}, "max_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"seed": -1}, "seed"),
        ({"alpha": 1e5, "omega": 1.0}, "alpha"),
        ({"alpha": 0.0, "omega": 1.0}, "alpha"),
        ({"alpha": 2.0, "omega": -1.0}, "omega"),
        ({"alpha": 2.0}, "omega"),
        ({"omega": 1.0}, "alpha"),
        ({"alpha": 2.0, "omega": 1.0, "strength": 1.0}, "strength"),
        ({"strength": 11.0}, "strength"),
        ({"stop": [""]}, "stop"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"repetition_penalty": 1e-200}, "repetition_penalty"),
        ({"frequency_penalty": 2.5}, "frequency_penalty"),
        ({"presence_penalty": -2.1}, "presence_penalty"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"min_tokens": 9}, "min_tokens"),  # more than the 8 tokens it may have
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"best_of": 2}, "best_of"),
    ],
)
def test_a_bad_value_is_refused_by_name_at_the_door(route: type[BaseModel], fields: dict, param: str) -> None:
    assert refused_param(route, fields) == param


def test_the_logprob_fields_are_checked_in_each_routes_own_terms() -> None:
    assert refused_param(ChatCompletionRequest, {"top_logprobs": 2}) == "top_logprobs"  # without logprobs: true
    assert refused_param(ChatCompletionRequest, {"logprobs": True, "top_logprobs": 21}) == "top_logprobs"
    assert refused_param(CompletionRequest, {"logprobs": 6}) == "logprobs"
    assert refused_param(CompletionRequest, {"max_tokens": 0}) == "max_tokens"  # 0 is for echo alone
    assert refused_param(CompletionRequest, {"max_tokens": 0, "echo": True}, max_tokens=0) is None


def test_a_body_becomes_the_engines_parameters_in_one_step() -> None:
    chat = body(
        ChatCompletionRequest,
        {"temperature": 0.5, "seed": 7, "stop": "END", "logprobs": True, "top_logprobs": 2, "strength": 0.5},
    )
    first, third = engine_params(chat), engine_params(chat, copy=2)
    assert (first.temperature, first.seed, third.seed, first.stop) == (0.5, 7, 9, ("END",))  # n copies differ
    assert (first.logprobs, first.prompt_logprobs, first.strength, first.alpha) == (2, None, 0.5, None)
    defaults = engine_params(body(CompletionRequest, {}))
    assert (defaults.temperature, defaults.top_p, defaults.top_k, defaults.repetition_penalty) == (1.0, 1.0, 0, 1.0)
    echoed = engine_params(body(CompletionRequest, {"echo": True, "logprobs": 1}))
    assert (echoed.logprobs, echoed.prompt_logprobs) == (1, 1)


def test_max_completion_tokens_wins_over_max_tokens_on_chat() -> None:
    assert body(ChatCompletionRequest, {"max_tokens": 5, "max_completion_tokens": 3}).requested_max_tokens == 3
    assert body(ChatCompletionRequest, {"max_tokens": 5}).requested_max_tokens == 5
    assert body(CompletionRequest, {}).requested_max_tokens is None
