"""The size limits a request's grammar meets before any compiler sees it (docs/api.md, "Limits").

They bound the work of the checks and of our own code (a schema is walked here without recursion,
so no nesting can raise RecursionError later); what they do not bound — a chain of references
deep enough to crash llguidance's native compiler, a compile that takes too long — the grammar
check's own process catches (server/api/grammar_guard.py).
"""

from __future__ import annotations

import json
from typing import Any

from qadapter.core.errors import InvalidRequest

MAX_SPEC_CHARS = 128 * 1024  # a regex, a grammar, a choice list or a schema as JSON text
MAX_SCHEMA_DEPTH = 64  # nested objects and arrays in a schema
MAX_SCHEMA_VALUES = 5_000  # every value in a schema (a property of 2,000 compiles in ~0.5 s on a CPU)
MAX_CHOICES = 2_000  # llguidance's limit on the alternatives of one rule: more always fail at the first token


def spec_text(param: str, kind: str, spec: Any) -> str:
    """A structured output's specification as the text its compiler reads, once it is within limits."""
    if kind in ("json_schema", "choice"):
        value = _parsed(param, spec) if isinstance(spec, str) else spec
        is_choices = isinstance(value, list) and all(isinstance(v, str) for v in value)
        if kind == "choice" and (not is_choices or len(value) > MAX_CHOICES):
            raise InvalidRequest(f"{param} must be a list of at most {MAX_CHOICES} strings", param=param)
        _check_tree(param, value)
        text = json.dumps(value)
    elif isinstance(spec, str):
        text = spec
    else:
        raise InvalidRequest(f"{param} must be a string", param=param)
    _check_length(param, text)
    return text


def _parsed(param: str, text: str) -> Any:
    _check_length(param, text)
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidRequest(f"{param} is not valid JSON (or nests too deeply)", param=param) from None


def _check_length(param: str, text: str) -> None:
    if len(text) > MAX_SPEC_CHARS:
        raise InvalidRequest(f"{param} is {len(text)} characters long; this server takes {MAX_SPEC_CHARS}", param=param)


def _check_tree(param: str, value: Any) -> None:
    """Refuse a JSON value nested deeper than MAX_SCHEMA_DEPTH or holding more than MAX_SCHEMA_VALUES values."""
    pending = [(value, 1)]
    num_values = 0
    while pending:
        node, depth = pending.pop()
        num_values += 1
        if num_values > MAX_SCHEMA_VALUES:
            raise InvalidRequest(f"{param} holds more than {MAX_SCHEMA_VALUES} values; simplify it", param=param)
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        if children and depth >= MAX_SCHEMA_DEPTH:
            raise InvalidRequest(f"{param} nests deeper than {MAX_SCHEMA_DEPTH} levels; flatten it", param=param)
        pending.extend((child, depth + 1) for child in children)
