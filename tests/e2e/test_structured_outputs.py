"""Structured outputs through the official `openai` client on a real server serving the shipped
adapters: the output parses and validates against its schema for the base model and each shipped
adapter, streamed and not; vLLM's guided fields; and a schema that cannot compile is a 400."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import openai
import pytest

from qadapter.testing.server_process import ServerProcess
from tests.e2e.conftest import KEY

BASE = "smollm2-135m-instruct"
EXAMPLES = Path(__file__).resolve().parents[2] / "adapters" / "examples"
ASK = [{"role": "user", "content": "Give the capital of France and its population as JSON."}]
CITY = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "country": {"type": "string", "enum": ["France", "Germany", "Italy"]},
        "population_millions": {"type": "integer", "minimum": 0, "maximum": 100},
    },
    "required": ["city", "country", "population_millions"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    store = tmp_path_factory.mktemp("structured-store")
    flags = ("--api-keys", KEY, "--install-adapters", str(EXAMPLES))
    process = ServerProcess(store, tmp_path_factory.mktemp("structured-logs") / "server.log", *flags)
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="module")
def client(shipped: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{shipped.url}/v1", api_key=KEY, max_retries=0)


def answer(client: openai.OpenAI, model: str, stream: bool, **fields: object) -> tuple[str, str | None]:
    arguments = {"model": model, "messages": ASK, "max_tokens": 100, "temperature": 0, **fields}
    if not stream:
        choice = client.chat.completions.create(**arguments).choices[0]
        return choice.message.content or "", choice.finish_reason
    chunks = [c for c in client.chat.completions.create(**arguments, stream=True) if c.choices]
    return "".join(c.choices[0].delta.content or "" for c in chunks), chunks[-1].choices[0].finish_reason


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("model", [BASE, "harmless", "concise"])
def test_json_schema_outputs_validate(client: openai.OpenAI, model: str, stream: bool) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY, "strict": True}}
    text, reason = answer(client, model, stream, response_format=response_format)
    assert reason == "stop", text
    jsonschema.validate(json.loads(text), CITY)


@pytest.mark.parametrize("model", [BASE, "harmless", "concise"])
def test_json_object_outputs_parse_as_an_object(client: openai.OpenAI, model: str) -> None:
    text, reason = answer(client, model, False, response_format={"type": "json_object"})
    assert reason == "stop" and isinstance(json.loads(text), dict), text


def test_vllms_guided_fields_hold(client: openai.OpenAI) -> None:
    choice, _ = answer(client, BASE, False, extra_body={"guided_choice": ["yes", "no"]})
    assert choice in {"yes", "no"}
    year, _ = answer(client, "concise", True, extra_body={"guided_regex": "[12][0-9]{3}"})
    assert len(year) == 4 and year.isdigit()
    both, _ = answer(client, BASE, False, extra_body={"structured_outputs": {"json": CITY}})
    jsonschema.validate(json.loads(both), CITY)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
            "response_format",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"extra_body": {"guided_regex": "[0-9"}}, "guided_regex"),
        ({"extra_body": {"guided_json": "{not json"}}, "guided_json"),
        ({"extra_body": {"guided_regex": "[0-9]", "guided_choice": ["a"]}}, "guided_choice"),
        ({"extra_body": {"structured_outputs": {"xml": "<a/>"}}}, "structured_outputs"),
    ],
)
def test_a_structured_output_that_cannot_be_used_is_a_400_naming_it(
    client: openai.OpenAI, fields: dict, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=BASE, messages=ASK, max_tokens=4, **fields)
    assert caught.value.param == param
