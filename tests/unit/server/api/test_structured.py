"""server/api/structured.py with the real grammar check (the embedded model's tokenizer): which body
field becomes which grammar, JSON schemas served compact with bounded integers, and the 400s that
name their field: two structured outputs at once, an unknown kind, an unusable specification, and a
grammar that allows only an empty answer when min_tokens asks for more."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from qadapter.core.errors import InvalidRequest
from qadapter.core.model import load_base_model
from qadapter.core.settings import Settings
from qadapter.server.api.grammar_guard import CheckedGrammar, GrammarGuard
from qadapter.server.api.protocol import ChatCompletionRequest, CompletionRequest, SamplingBody
from qadapter.server.api.structured import COMPACT_JSON, FLEXIBLE_JSON, MAX_SAFE_INTEGER, requested_grammar
from qadapter.server.api.tools import ToolPlan

POINT = {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}


@pytest.fixture(scope="module")
def guard() -> Iterator[GrammarGuard]:
    loaded = load_base_model(Settings(device="cpu"), weights=False)  # the real tokenizer, no weights
    guard = GrammarGuard(loaded.tokenizer, loaded.model.config.vocab_size, timeout_s=10)
    yield guard
    guard.close()


def chat(**fields: Any) -> ChatCompletionRequest:
    text = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Hi"}], **fields})
    return ChatCompletionRequest.model_validate_json(text)


def completion(**fields: Any) -> CompletionRequest:
    return CompletionRequest.model_validate_json(json.dumps({"model": "m", "prompt": "Hi", **fields}))


def grammar(
    guard: GrammarGuard, body: SamplingBody, forced: tuple[ToolPlan, dict[str, Any]] | None = None
) -> CheckedGrammar | None:
    return asyncio.run(requested_grammar(body, forced, guard))


def schema_of(checked: CheckedGrammar | None) -> dict[str, Any]:
    assert checked is not None
    return json.loads(checked.grammar)["grammars"][0]["json_schema"]


def refused(guard: GrammarGuard, body: SamplingBody, forced: tuple[ToolPlan, dict[str, Any]] | None = None) -> str:
    with pytest.raises(InvalidRequest) as caught:
        grammar(guard, body, forced)
    assert caught.value.param is not None
    return caught.value.param


@pytest.mark.parametrize(
    "body",
    [chat(), completion(), chat(response_format={"type": "text"}), chat(structured_outputs={})],
    ids=["chat", "completion", "text", "empty-structured_outputs"],
)
def test_a_request_without_structured_output_gets_no_grammar(guard: GrammarGuard, body: SamplingBody) -> None:
    assert grammar(guard, body) is None


def test_an_options_only_structured_outputs_asks_for_nothing(guard: GrammarGuard) -> None:
    assert grammar(guard, completion(structured_outputs={"disable_any_whitespace": False})) is None


@pytest.mark.parametrize(
    ("body", "schema"),
    [
        (chat(response_format={"type": "json_object"}), {"type": "object"}),
        (chat(response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": POINT}}), POINT),
        (chat(response_format={"type": "json_schema", "json_schema": {"name": "p"}}), {"type": "object"}),
        (completion(guided_json=POINT), POINT),
        (completion(guided_json=json.dumps(POINT)), POINT),
        (chat(structured_outputs={"json": POINT}), POINT),
    ],
    ids=["json_object", "json_schema", "json_schema-without-schema", "guided_json", "guided_json-text", "so.json"],
)
def test_every_json_field_is_served_as_its_schema_in_compact_layout(
    guard: GrammarGuard, body: SamplingBody, schema: dict[str, Any]
) -> None:
    assert schema_of(grammar(guard, body)) == {"x-guidance": COMPACT_JSON, **schema}


def test_disable_any_whitespace_false_serves_the_schema_with_flexible_whitespace(guard: GrammarGuard) -> None:
    body = completion(guided_json=POINT, structured_outputs={"disable_any_whitespace": False})
    assert schema_of(grammar(guard, body)) == {"x-guidance": FLEXIBLE_JSON, **POINT}


def test_a_schema_that_sets_its_own_layout_keeps_it(guard: GrammarGuard) -> None:
    own = {"x-guidance": {"whitespace_flexible": True}, **POINT}
    assert schema_of(grammar(guard, completion(guided_json=own)))["x-guidance"] == {"whitespace_flexible": True}


def test_unbounded_integers_in_every_subschema_get_json_s_safe_range_and_bounds_set_are_kept(
    guard: GrammarGuard,
) -> None:
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer"},
            "list": {"type": "array", "items": {"type": ["integer", "null"]}},
            "either": {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}]},
            "capped": {"type": "integer", "exclusiveMaximum": 10},
        },
        "$defs": {"d": {"type": "integer"}},
        "default": {"type": "integer"},  # data, not a subschema
    }
    served = schema_of(grammar(guard, completion(guided_json=schema)))
    safe = {"maximum": MAX_SAFE_INTEGER, "minimum": -MAX_SAFE_INTEGER}
    assert served["properties"]["n"] == {"type": "integer", **safe}
    assert served["properties"]["list"]["items"] == {"type": ["integer", "null"], **safe}
    assert served["properties"]["either"]["anyOf"][0] == {"type": "integer", "minimum": 0, "maximum": MAX_SAFE_INTEGER}
    assert served["properties"]["capped"] == {"type": "integer", "exclusiveMaximum": 10, "minimum": -MAX_SAFE_INTEGER}
    assert served["$defs"]["d"] == {"type": "integer", **safe}
    assert served["default"] == {"type": "integer"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (completion(guided_regex="[a-z]+"), "[a-z]+"),
        (chat(structured_outputs={"regex": "[0-9]{3}"}), "[0-9]{3}"),
        (completion(guided_choice=["yes", "no"]), 'start: "yes" | "no"'),
        (chat(structured_outputs={"choice": ["up", "down"]}), 'start: "up" | "down"'),
        (completion(guided_grammar='start: "x"+'), 'start: "x"+'),
        (chat(structured_outputs={"grammar": 'start: "y"'}), 'start: "y"'),
    ],
)
def test_regex_choice_and_grammar_fields_become_their_grammar(
    guard: GrammarGuard, body: SamplingBody, expected: str
) -> None:
    checked = grammar(guard, body)
    assert checked is not None and expected in checked.grammar and not checked.ends_at_once


def test_a_forced_tool_call_is_served_as_its_arguments_schema(guard: GrammarGuard) -> None:
    assert schema_of(grammar(guard, chat(), (ToolPlan(forced="move"), POINT))) == {"x-guidance": COMPACT_JSON, **POINT}


@pytest.mark.parametrize(
    ("body", "forced", "param"),
    [
        (chat(response_format={"type": "json_object"}, guided_regex="a"), None, "guided_regex"),
        (completion(guided_json=POINT, guided_choice=["a"]), None, "guided_choice"),
        (completion(guided_regex="a", structured_outputs={"json": POINT}), None, "structured_outputs.json"),
        (chat(structured_outputs={"regex": "a", "choice": ["b"]}), None, "structured_outputs.choice"),
        (chat(response_format={"type": "json_object"}), (ToolPlan(forced="f"), POINT), "response_format"),
    ],
)
def test_two_structured_outputs_at_once_are_a_400_naming_the_second(
    guard: GrammarGuard, body: SamplingBody, forced: tuple[ToolPlan, dict[str, Any]] | None, param: str
) -> None:
    assert refused(guard, body, forced) == param


def test_an_unknown_structured_outputs_kind_is_a_400_naming_structured_outputs(guard: GrammarGuard) -> None:
    with pytest.raises(InvalidRequest, match="structured_outputs.xml is not supported") as caught:
        grammar(guard, chat(structured_outputs={"xml": "<a/>"}))
    assert caught.value.param == "structured_outputs"


def test_json_schema_without_its_json_schema_is_a_400_naming_response_format(guard: GrammarGuard) -> None:
    assert refused(guard, chat(response_format={"type": "json_schema"})) == "response_format"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (completion(guided_regex="("), "guided_regex"),
        (completion(guided_json="{not json"), "guided_json"),
        (chat(structured_outputs={"choice": "yes"}), "structured_outputs.choice"),
        (chat(structured_outputs={"regex": 5}), "structured_outputs.regex"),
        (completion(guided_grammar="start: undefined_rule"), "guided_grammar"),
    ],
)
def test_a_specification_that_cannot_be_used_is_a_400_naming_its_field(
    guard: GrammarGuard, body: SamplingBody, param: str
) -> None:
    assert refused(guard, body) == param


def test_a_grammar_that_allows_only_the_empty_answer_is_refused_when_min_tokens_asks_for_more(
    guard: GrammarGuard,
) -> None:
    checked = grammar(guard, completion(guided_regex=""))
    assert checked is not None and checked.ends_at_once
    assert grammar(guard, completion(guided_regex="", min_tokens=0)) is not None
    assert refused(guard, completion(guided_regex="", min_tokens=1)) == "min_tokens"
    assert grammar(guard, completion(guided_regex="a+", min_tokens=3)) is not None
