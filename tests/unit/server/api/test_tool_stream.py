"""A forced tool call's stream deltas, from its decoded text fed in pieces of every size."""

from __future__ import annotations

import json

import pytest

from qadapter.server.api.tool_stream import ToolCallDeltas
from qadapter.server.api.tools import ToolPlan

ARGUMENTS = '{"city": "Paris", "days": [1, 2], "note": "a } and a \\" in it"}'


def streamed(plan: ToolPlan, text: str, piece: int) -> tuple[list[dict], list[dict]]:
    """The deltas sent while the text comes in pieces of `piece` characters, and those at its end."""
    deltas = ToolCallDeltas(plan)
    during = [d for i in range(0, len(text), piece) for d in deltas.feed(text[i : i + piece])]
    return during, deltas.finish()


def joined(deltas: list[dict]) -> tuple[str, str]:
    header = deltas[0]
    assert header["index"] == 0 and header["type"] == "function" and header["id"].startswith("call_")
    assert all("name" not in d["function"] and set(d) == {"index", "function"} for d in deltas[1:])
    return header["function"]["name"], "".join(d["function"]["arguments"] for d in deltas)


@pytest.mark.parametrize("piece", [1, 3, 1000])
def test_a_named_call_streams_its_arguments_as_they_come(piece: int) -> None:
    during, end = streamed(ToolPlan("get_weather"), ARGUMENTS, piece)
    assert joined(during + end) == ("get_weather", ARGUMENTS)
    assert not end  # nothing was held back
    if piece == 1:
        assert len(during) == len(ARGUMENTS) + 1


@pytest.mark.parametrize("piece", [1, 4, 1000])
def test_a_required_call_streams_once_its_name_is_known_and_holds_back_the_closing_brace(piece: int) -> None:
    text = json.dumps({"name": "get_weather", "arguments": json.loads(ARGUMENTS)})
    during, end = streamed(ToolPlan(None), text, piece)
    name, arguments = joined(during + end)
    assert name == "get_weather" and arguments == json.dumps(json.loads(ARGUMENTS))  # no wrapper "}", no space
    if piece == 1:
        assert len(during) > 10


def test_a_required_call_in_another_form_comes_whole_at_the_end() -> None:
    text = json.dumps({"arguments": {"city": "Paris"}, "name": "get_weather"})
    during, end = streamed(ToolPlan(None), text, 2)
    assert not during
    assert joined(end) == ("get_weather", '{"city": "Paris"}')
