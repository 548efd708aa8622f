"""A forced tool call streamed as OpenAI's tool-call deltas while it is decoded: first the call's id
and name, then its arguments piece by piece, as the tokens come."""

from __future__ import annotations

import re
from typing import Any

from qadapter.server.api.tools import ToolPlan, new_call_id

# The start of a "required" call as its grammar decodes it: {"name": "<function>", "arguments": …
# (complete once the arguments' first character has come, so that they start with it, not a space)
_NAMED_PREFIX = re.compile(r'\{\s*"name"\s*:\s*"([A-Za-z0-9_-]{1,64})"\s*,\s*"arguments"\s*:\s*(?=\S)')


class ToolCallDeltas:
    """The deltas of one choice's call, from its text so far (`feed`) and at its end (`finish`).

    With a named function the text is the arguments. With "required" it is `{"name", "arguments"}`:
    the name is known once that prefix is complete, and the wrapper's closing brace is held back
    until the end. Should the text not start that way, the call is sent whole at the end instead.
    """

    def __init__(self, plan: ToolPlan) -> None:
        self._plan = plan
        self._text = ""
        self._arguments_start: int | None = 0 if plan.forced is not None else None
        self._num_sent = 0  # characters of the arguments sent so far
        self.has_started = False  # whether the call's first delta (id, name) went out

    def feed(self, text: str) -> list[dict[str, Any]]:
        """The deltas the new text allows."""
        self._text += text
        deltas = self._header()
        if self.has_started:
            held_back = 0 if self._plan.forced is not None else 1 + len(self._text) - len(self._text.rstrip())
            deltas += self._arguments(len(self._text) - held_back)
        return deltas

    def finish(self) -> list[dict[str, Any]]:
        """The rest of a complete call (the grammar ended it)."""
        deltas = self._header()
        if not self.has_started:  # not in the expected form: the whole call as one delta
            call = self._plan.calls(self._text)[0]
            self.has_started = True
            return [{"index": 0, **call}]
        end = len(self._text) if self._plan.forced is not None else len(self._text.rstrip()) - 1
        return deltas + self._arguments(end)

    def _header(self) -> list[dict[str, Any]]:
        if self.has_started:
            return []
        name = self._plan.forced
        if name is None:
            found = _NAMED_PREFIX.match(self._text)
            if found is None:
                return []
            name, self._arguments_start = found.group(1), found.end()
        self.has_started = True
        return [{"index": 0, "id": new_call_id(), "type": "function", "function": {"name": name, "arguments": ""}}]

    def _arguments(self, end: int) -> list[dict[str, Any]]:
        assert self._arguments_start is not None
        piece = self._text[self._arguments_start + self._num_sent : end]
        if not piece:
            return []
        self._num_sent += len(piece)
        return [{"index": 0, "function": {"arguments": piece}}]
