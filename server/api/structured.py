"""From a request's structured-output fields (OpenAI's `response_format`, vLLM's `guided_*` and
`structured_outputs`) to the one grammar the engine enforces (server/engine/grammar.py)."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import llguidance

from qadapter.core.errors import InvalidRequest
from qadapter.server.api.protocol import SamplingBody
from qadapter.server.api.tools import forced_tool_call
from qadapter.server.engine.grammar import check_grammar

# JSON without free whitespace (one space after `:` and `,`): a small model given the freedom fills
# its budget with newlines before it closes the object
COMPACT_JSON = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}
# vLLM's `structured_outputs` keys → llguidance's grammar kinds
STRUCTURED_OUTPUT_KINDS = {"json": "json_schema", "regex": "regex", "choice": "choice", "grammar": "grammar"}


def requested_grammar(body: SamplingBody) -> str | None:
    """llguidance's form of the structured output the request asks for; None when it asks for none.
    A 400 names the field when it asks for two, or for one that cannot be compiled."""
    asked = _asked(body)
    if len(asked) > 1:
        raise InvalidRequest("ask for one structured output at a time", param=asked[1][0])
    if not asked:
        return None
    param, kind, spec = asked[0]
    if kind == "json_schema" and isinstance(spec, dict):
        spec = {"x-guidance": COMPACT_JSON, **spec}  # unless the schema sets its own
    return _compiled(param, kind, spec if isinstance(spec, str) else json.dumps(spec))


def _asked(body: SamplingBody) -> list[tuple[str, str, Any]]:
    """(field, grammar kind, specification) of every structured output the request names."""
    asked: list[tuple[str, str, Any]] = []
    forced_call = forced_tool_call(body)
    if forced_call is not None:
        asked.append(("tools", "json_schema", forced_call[1]))
    response_format = getattr(body, "response_format", None)  # chat only
    if response_format is not None and response_format.type == "json_object":
        asked.append(("response_format", "json_schema", {"type": "object"}))
    elif response_format is not None and response_format.type == "json_schema":
        if response_format.json_schema is None:
            raise InvalidRequest("response_format json_schema needs its json_schema", param="response_format")
        schema = response_format.json_schema.schema_
        asked.append(("response_format", "json_schema", {"type": "object"} if schema is None else schema))
    for field, kind in (("guided_json", "json_schema"), ("guided_regex", "regex"), ("guided_grammar", "grammar")):
        if getattr(body, field) is not None:
            asked.append((field, kind, getattr(body, field)))
    if body.guided_choice is not None:
        asked.append(("guided_choice", "choice", body.guided_choice))
    for key, spec in (body.structured_outputs or {}).items():
        if key not in STRUCTURED_OUTPUT_KINDS:
            known = ", ".join(STRUCTURED_OUTPUT_KINDS)
            raise InvalidRequest(
                f"structured_outputs.{key} is not supported (use one of {known})", param="structured_outputs"
            )
        asked.append((f"structured_outputs.{key}", STRUCTURED_OUTPUT_KINDS[key], spec))
    return asked


@lru_cache(maxsize=256)  # a client sends the same schema again and again: check it once
def _compiled(param: str, kind: str, text: str) -> str:
    try:
        grammar = llguidance.grammar_from(kind, text)
    except ValueError as exc:
        raise InvalidRequest(f"{param} cannot be used: {exc}", param=param) from None
    check_grammar(grammar, param)
    return grammar
