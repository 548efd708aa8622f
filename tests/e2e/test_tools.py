"""Forced tool calls through the official `openai` client on a real server: the call's arguments
validate against the function's parameters, whole and streamed; tool messages in the history; and
what cannot work ("auto" without a tool parser) is a 400 that says what does."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from qadapter.testing.server_process import ServerProcess
from tests.e2e.conftest import KEY

BASE = "smollm2-135m-instruct"
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {"type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}}, "required": ["zone"]}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER},
    },
    {"type": "function", "function": {"name": "get_time", "parameters": TIME}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)


@pytest.mark.parametrize("model", [BASE, "zero"])
def test_a_named_function_is_called_with_valid_arguments(client: openai.OpenAI, model: str) -> None:
    choice_of = {"type": "function", "function": {"name": "get_weather"}}
    done = client.chat.completions.create(
        model=model, messages=ASK, tools=TOOLS, tool_choice=choice_of, max_tokens=60, temperature=0
    )
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)


def test_required_picks_one_of_the_tools(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(
        model=BASE, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=80, temperature=0
    )
    (call,) = done.choices[0].message.tool_calls
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.parametrize(
    ("model", "tool_choice"), [("bold", {"type": "function", "function": {"name": "get_weather"}}), (BASE, "required")]
)
def test_a_streamed_call_comes_as_tool_call_deltas_while_it_is_decoded(
    client: openai.OpenAI, model: str, tool_choice: dict | str
) -> None:
    """As OpenAI streams one: the call's id and name first, then its arguments in pieces; the same
    call as the whole response's (greedy)."""
    arguments = {"model": model, "messages": ASK, "tools": TOOLS, "tool_choice": tool_choice, "temperature": 0}
    whole = client.chat.completions.create(**arguments, max_tokens=80).choices[0].message.tool_calls[0]
    deltas, reasons = [], []
    for chunk in client.chat.completions.create(**arguments, max_tokens=80, stream=True):
        deltas += chunk.choices[0].delta.tool_calls or []
        reasons.append(chunk.choices[0].finish_reason)
        assert not chunk.choices[0].delta.content
    assert [r for r in reasons if r] == ["tool_calls"]
    assert deltas[0].function.name == whole.function.name and deltas[0].id and deltas[0].index == 0
    assert all(d.index == 0 and not d.id and not d.function.name for d in deltas[1:])
    assert len(deltas) > 3  # the arguments came in pieces, not whole at the end
    streamed = "".join(d.function.arguments or "" for d in deltas)
    assert json.loads(streamed) == json.loads(whole.function.arguments)
    jsonschema.validate(json.loads(streamed), SCHEMAS[whole.function.name])


def test_tool_messages_in_the_history_are_rendered(client: openai.OpenAI) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees and sunny"},
    ]
    done = client.chat.completions.create(model=BASE, messages=history, tools=TOOLS, tool_choice="none", max_tokens=20)
    assert done.choices[0].message.content and not done.choices[0].message.tool_calls


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"tools": TOOLS}, "required"),  # no tool_choice is OpenAI's "auto"
        ({"tools": TOOLS, "tool_choice": "auto"}, "required"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "not in tools"),
        ({"tool_choice": "required"}, "needs tools"),
        ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "one structured"),
    ],
)
def test_what_cannot_work_is_a_400_that_says_what_does(client: openai.OpenAI, fields: dict, words: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=BASE, messages=ASK, max_tokens=4, **fields)
    assert words in caught.value.message


def test_completions_take_no_tools(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=BASE, prompt="Hi", max_tokens=2, extra_body={"tools": TOOLS})
    assert caught.value.param == "tools"
