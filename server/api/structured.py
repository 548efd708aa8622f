"""From a request's structured-output fields (OpenAI's `response_format`, vLLM's `guided_*` and
`structured_outputs`) to the one grammar the engine enforces (server/engine/grammar.py), checked
within limits (grammar_limits.py) and by the grammar check process (grammar_guard.py)."""

from __future__ import annotations

import json
from typing import Any

from fastapi.concurrency import run_in_threadpool

from qadapter.core.errors import InvalidRequest
from qadapter.server.api.grammar_guard import CheckedGrammar, GrammarGuard
from qadapter.server.api.grammar_limits import spec_text
from qadapter.server.api.protocol import SamplingBody
from qadapter.server.api.tools import ToolPlan

# JSON is compact by default (one space after `:` and `,`), flexible (any whitespace, vLLM's default)
# with `structured_outputs: {"disable_any_whitespace": false}`: on the embedded model, free
# whitespace let `json_object` answers run on to max_tokens for all three shipped models, compact
# closed them. Integers without bounds get JSON's interoperable range (RFC 8259, section 6), so a
# model that repeats a digit must stop after 16 of them (without: `"population": 1111…` to max_tokens).
COMPACT_JSON = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}
FLEXIBLE_JSON = {"whitespace_flexible": True}
MAX_SAFE_INTEGER = 2**53 - 1
# The keywords whose values are subschemas (JSON Schema 2020-12, and draft 7's spellings)
SCHEMA_KEYWORDS = {"items", "additionalProperties", "additionalItems", "not", "if", "then", "else", "contains"}
SCHEMA_KEYWORDS |= {"propertyNames", "unevaluatedItems", "unevaluatedProperties"}
SCHEMA_LIST_KEYWORDS = {"anyOf", "oneOf", "allOf", "prefixItems", "items"}
SCHEMA_MAP_KEYWORDS = {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
# vLLM's `structured_outputs` keys → llguidance's grammar kinds; and the options it may carry
STRUCTURED_OUTPUT_KINDS = {"json": "json_schema", "regex": "regex", "choice": "choice", "grammar": "grammar"}
STRUCTURED_OUTPUT_OPTIONS = {"disable_any_whitespace"}


async def requested_grammar(
    body: SamplingBody, forced_call: tuple[ToolPlan, dict[str, Any]] | None, guard: GrammarGuard
) -> CheckedGrammar | None:
    """The checked grammar of the structured output the request asks for (`forced_call`: its forced
    tool call, if any); None when it asks for none. A 400 names the field when it asks for two, or
    for one that cannot be used."""
    asked = _asked(body, forced_call)
    if len(asked) > 1:
        raise InvalidRequest("ask for one structured output at a time", param=asked[1][0])
    if not asked:
        return None
    compact = (body.structured_outputs or {}).get("disable_any_whitespace", True) is not False
    checked = await run_in_threadpool(_checked, *asked[0], guard, compact)  # a check can take a while
    if checked.ends_at_once and body.min_tokens:
        raise InvalidRequest(f"{asked[0][0]} allows only an empty answer, which min_tokens forbids", param="min_tokens")
    return checked


def _checked(param: str, kind: str, spec: Any, guard: GrammarGuard, compact: bool) -> CheckedGrammar:
    text = spec_text(param, kind, spec)
    return guard.check(param, kind, _as_served(text, compact) if kind == "json_schema" else text)


def _as_served(text: str, compact: bool) -> str:
    """A JSON schema (within limits) with its layout (unless it sets its own) and bounded integers."""
    schema = json.loads(text)
    if not isinstance(schema, dict):
        return text
    pending: list[Any] = [schema]
    while pending:  # every subschema, without recursion (not `const`, `enum` or `default`: data)
        node = pending.pop()
        if not isinstance(node, dict):
            continue
        types = node.get("type")
        if types == "integer" or (isinstance(types, list) and "integer" in types):
            if "maximum" not in node and "exclusiveMaximum" not in node:
                node["maximum"] = MAX_SAFE_INTEGER
            if "minimum" not in node and "exclusiveMinimum" not in node:
                node["minimum"] = -MAX_SAFE_INTEGER
        for key, value in node.items():
            if key in SCHEMA_KEYWORDS:
                pending.append(value)
            elif key in SCHEMA_LIST_KEYWORDS and isinstance(value, list):
                pending.extend(value)
            elif key in SCHEMA_MAP_KEYWORDS and isinstance(value, dict):
                pending.extend(value.values())
    return json.dumps({"x-guidance": COMPACT_JSON if compact else FLEXIBLE_JSON, **schema})


def _asked(body: SamplingBody, forced_call: tuple[ToolPlan, dict[str, Any]] | None) -> list[tuple[str, str, Any]]:
    """(field, grammar kind, specification) of every structured output the request names."""
    asked: list[tuple[str, str, Any]] = []
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
        if key in STRUCTURED_OUTPUT_OPTIONS:
            continue
        if key not in STRUCTURED_OUTPUT_KINDS:
            known = ", ".join([*STRUCTURED_OUTPUT_KINDS, *STRUCTURED_OUTPUT_OPTIONS])
            raise InvalidRequest(
                f"structured_outputs.{key} is not supported (use one of {known})", param="structured_outputs"
            )
        asked.append((f"structured_outputs.{key}", STRUCTURED_OUTPUT_KINDS[key], spec))
    return asked
