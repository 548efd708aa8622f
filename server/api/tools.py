"""Forced tool calls: with `tool_choice` "required" or a named function, the answer is decoded as a
structured output against the function's parameters and returned as OpenAI `tool_calls`. "auto"
would need a parser of this model's own tool-call format, which the embedded model does not have."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from qadapter.core.errors import InvalidRequest
from qadapter.server.api.protocol import (
    ChatCompletionRequest,
    FunctionSpec,
    NamedToolChoice,
    SamplingBody,
    ToolChoice,
    ToolSpec,
)


@dataclass(frozen=True)
class ToolPlan:
    """How the answer becomes a tool call: as the arguments of `forced`, or as `{"name", "arguments"}`."""

    forced: str | None

    def is_complete(self, text: str) -> bool:
        """Whether the answer is a whole call: a stop sequence or token can cut it short."""
        try:
            value = json.loads(text)
        except ValueError:
            return False
        return self.forced is not None or (isinstance(value, dict) and {"name", "arguments"} <= value.keys())

    def calls(self, text: str) -> list[dict[str, Any]]:
        """OpenAI's `tool_calls` from a complete answer (the grammar made it valid JSON)."""
        if self.forced is not None:
            name, arguments = self.forced, text
        else:
            chosen = json.loads(text)
            name, arguments = chosen["name"], json.dumps(chosen["arguments"])
        return [
            {
                "id": new_call_id(),
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
        ]


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def forced_tool_call(body: SamplingBody) -> tuple[ToolPlan, dict[str, Any]] | None:
    """How a request's forced tool call is decoded (its plan and schema); None when it calls no tool."""
    return tool_plan(body.tools, body.tool_choice) if isinstance(body, ChatCompletionRequest) else None


def tool_plan(tools: list[ToolSpec] | None, choice: ToolChoice | None) -> tuple[ToolPlan, dict[str, Any]] | None:
    """The plan and the JSON schema the answer must follow; None when no tool is to be called."""
    if not tools or choice in (None, "none"):
        if choice not in (None, "none"):
            raise InvalidRequest("tool_choice needs tools", param="tool_choice")
        if tools and choice is None:
            _refuse_auto()
        return None
    if choice == "auto":
        _refuse_auto()
    by_name = {tool.function.name: tool.function for tool in tools}
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in by_name:
            raise InvalidRequest(
                f"tool_choice names {choice.function.name!r}, which is not in tools", param="tool_choice"
            )
        return ToolPlan(choice.function.name), _parameters(by_name[choice.function.name])
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": _parameters(function)},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for name, function in by_name.items()
    ]
    return ToolPlan(None), options[0] if len(options) == 1 else {"anyOf": options}


def _parameters(function: FunctionSpec) -> dict[str, Any]:
    return function.parameters or {"type": "object", "properties": {}}


def _refuse_auto() -> None:
    raise InvalidRequest(
        'tool_choice "auto" needs a parser of the model\'s own tool-call format, which this model lacks: '
        'set tool_choice to "required" or {"type": "function", "function": {"name": ...}}',
        param="tool_choice",
    )
