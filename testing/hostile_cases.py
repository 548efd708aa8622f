"""Hostile requests and the answer a hardened server gives each (docs/api.md, "Limits"): shared by
tests/e2e/test_hostile.py (each sent beside four normal streams) and bench/hostile.py (/health's
latency meanwhile). Bodies are built as JSON text: some nest deeper than Python's json module
writes."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import httpx

BASE = "smollm2-135m-instruct"
ASK = [{"role": "user", "content": "Answer in one word: what is the capital of France?"}]


@dataclass(frozen=True)
class Hostile:
    """One bad request: POST `path` with the JSON text `body()`; the status, error code and a piece of
    the message it must get (which also says which check refused it)."""

    name: str
    path: str
    body: Callable[[], str]
    status: int
    code: str
    message: str
    needs_key: bool = True

    def send(self, url: str, key: str, timeout_s: float = 120) -> httpx.Response:
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if self.needs_key else {})}
        return httpx.post(f"{url}{self.path}", content=self.body().encode(), headers=headers, timeout=timeout_s)


def chat(**fields: object) -> str:
    return json.dumps({"model": BASE, "messages": ASK, "max_tokens": 8, **fields})


def ref_chain(length: int) -> dict:
    """A schema whose `$ref`s form one chain `length` long (native recursion in llguidance)."""
    definitions = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(length)}
    return {"$defs": {**definitions, f"d{length}": {"type": "string"}}, "$ref": "#/$defs/d0"}


def rule_chain(length: int) -> str:
    """A Lark grammar whose rules form one chain: start: r0, r0: r1, …"""
    return "\n".join(["start: r0", *(f"r{i}: r{i + 1}" for i in range(length)), f'r{length}: "a"'])


def nested_schema(depth: int) -> str:
    """JSON text of a schema of arrays `depth` deep."""
    return '{"type": "array", "items": ' * depth + '{"type": "string"}' + "}" * depth


def nested_tool(depth: int) -> str:
    function = f'{{"name": "f", "parameters": {nested_schema(depth)}}}'
    start = chat(tool_choice="required")[:-1]
    return f'{start}, "tools": [{{"type": "function", "function": {function}}}]}}'


def properties(count: int) -> dict:
    return {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(count)}}


BAD = 400, "invalid_request_error"
CRASHES_THE_CHECK = "too complex for this server's grammar compiler"  # the check's process died on it
CHAT = "/v1/chat/completions"
CASES = [
    Hostile("schema_ref_chain_5000", CHAT, lambda: chat(guided_json=ref_chain(5000)), *BAD, "more than 5000 values"),
    Hostile("schema_ref_chain_1500", CHAT, lambda: chat(guided_json=ref_chain(1500)), *BAD, CRASHES_THE_CHECK),
    Hostile("grammar_rule_chain_3000", CHAT, lambda: chat(guided_grammar=rule_chain(3000)), *BAD, CRASHES_THE_CHECK),
    Hostile(
        "grammar_30000_lines",
        CHAT,
        lambda: chat(guided_grammar="\n".join(["start: r0 | r1", *(f'r{i}: "w{i}"' for i in range(30_000))])),
        *BAD,
        "characters long; this server takes",
    ),
    Hostile(
        "grammar_5000_alternatives",
        CHAT,
        lambda: chat(guided_grammar="start: " + " | ".join(f'"w{i}"' for i in range(5000))),
        *BAD,
        "Current row has 5001 items; max is 2000",
    ),
    Hostile("choice_100k", CHAT, lambda: chat(guided_choice=[f"c{i}" for i in range(100_000)]), *BAD, "at most 2000"),
    Hostile(
        "choice_10k", CHAT, lambda: chat(guided_choice=[f"option {i}" for i in range(10_000)]), *BAD, "at most 2000"
    ),
    Hostile("schema_10k_properties", CHAT, lambda: chat(guided_json=properties(10_000)), *BAD, "more than 5000 values"),
    Hostile(
        "regex_nested_repeats", CHAT, lambda: chat(guided_regex="((a{100}){100}){100}"), *BAD, "too many expressions"
    ),
    Hostile("regex_huge_repeat", CHAT, lambda: chat(guided_regex="x{4294967295}"), *BAD, "too many expressions"),
    Hostile(
        "schema_nested_960",
        CHAT,
        lambda: chat()[:-1] + f', "guided_json": {nested_schema(960)}}}',
        *BAD,
        "nests deeper than 64 levels",
    ),
    Hostile("tool_parameters_nested_960", CHAT, lambda: nested_tool(960), *BAD, "nests deeper than 64 levels"),
    Hostile(
        "empty_regex_with_min_tokens",
        CHAT,
        lambda: chat(guided_regex="", min_tokens=1),
        *BAD,
        "allows only an empty answer, which min_tokens forbids",
    ),
    Hostile(
        "tokenize_5MiB",
        "/tokenize",
        lambda: json.dumps({"model": BASE, "prompt": "x" * (5 << 20)}),
        413,
        "payload_too_large",
        "over this server's limit",
    ),
    Hostile(
        "detokenize_5MiB_without_a_key",
        "/detokenize",
        lambda: json.dumps({"model": BASE, "tokens": [1] * (5 << 19)}),
        401,
        "invalid_api_key",
        "Missing API key",
        needs_key=False,
    ),
]
