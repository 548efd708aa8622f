"""The grammar check (server/api/grammar_guard.py and its process) and the size limits before it:
a grammar that crashes the process is a 400 and the next one is checked by a new process; one past
the time budget is a 400 and is not remembered; verdicts are kept; limits name their field."""

from __future__ import annotations

import json
from collections.abc import Iterator

import llguidance
import pytest
import torch

from qadapter.core.errors import InvalidRequest, Overloaded
from qadapter.core.model import LoadedModel
from qadapter.server.api.grammar_guard import GrammarGuard
from qadapter.server.api.grammar_limits import MAX_CHOICES, MAX_SCHEMA_DEPTH, MAX_SCHEMA_VALUES, spec_text
from qadapter.server.engine.grammar import GrammarMasks
from qadapter.testing.hostile_cases import ref_chain, rule_chain


@pytest.fixture
def guard(embedded: LoadedModel) -> Iterator[GrammarGuard]:
    guard = GrammarGuard(embedded.tokenizer, embedded.model.config.vocab_size, timeout_s=10)
    yield guard
    guard.close()


def refused(guard: GrammarGuard, kind: str, text: str) -> str:
    with pytest.raises(InvalidRequest) as caught:
        guard.check("field", kind, text)
    assert caught.value.param == "field"
    return str(caught.value)


def test_a_grammar_that_crashes_the_check_is_a_400_and_the_next_is_checked_anew(guard: GrammarGuard) -> None:
    assert not guard.check("field", "regex", "[a-z]+").ends_at_once
    first = guard._process
    for crashing in (json.dumps(ref_chain(3000)), rule_chain(3000)):
        kind = "json_schema" if crashing.startswith("{") else "grammar"
        assert "too complex for this server's grammar compiler" in refused(guard, kind, crashing)
    assert guard._process is None and first is not None and first.poll() is not None  # it died
    assert guard.check("field", "json_schema", json.dumps(ref_chain(200))).grammar  # a new process
    assert "too complex" in refused(guard, "grammar", rule_chain(3000))  # remembered: no second crash
    assert guard._process is not None and guard._process.poll() is None


def test_a_grammar_past_the_time_budget_is_a_400_and_is_not_remembered(embedded: LoadedModel) -> None:
    guard = GrammarGuard(embedded.tokenizer, embedded.model.config.vocab_size, timeout_s=0.05)
    try:
        slow = json.dumps({"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(2000)}})
        assert "did not compile within 0.05 s" in refused(guard, "json_schema", slow)
        assert ("json_schema", slow) not in guard._verdicts
    finally:
        guard.close()


def test_limits_that_show_at_the_first_token_are_a_400_before_admission(guard: GrammarGuard) -> None:
    alternatives = "start: " + " | ".join(f'"w{i}"' for i in range(3000))
    assert "Current row has 3001 items" in refused(guard, "grammar", alternatives)
    assert "too many expressions" in refused(guard, "regex", "x{4294967295}")
    assert "unknown name" in refused(guard, "grammar", "start: nothing_defined")
    assert guard.check("field", "regex", "").ends_at_once and not guard.check("field", "regex", "a?").ends_at_once


def test_too_many_waiting_checks_are_a_503(guard: GrammarGuard) -> None:
    for _ in range(8):
        assert guard._waiting.acquire(blocking=False)
    with pytest.raises(Overloaded):
        guard.check("field", "regex", "[0-9]+")
    assert ("regex", "[0-9]+") not in guard._verdicts


@pytest.mark.parametrize(
    ("kind", "spec", "fragment"),
    [
        ("choice", ["a"] * (MAX_CHOICES + 1), f"at most {MAX_CHOICES} strings"),
        ("choice", [["a"], "b"], "strings"),  # a list in a choice would be a Lark optional
        ("json_schema", {"a": [0] * MAX_SCHEMA_VALUES}, f"more than {MAX_SCHEMA_VALUES} values"),
        ("json_schema", "[" * MAX_SCHEMA_DEPTH + "0" + "]" * MAX_SCHEMA_DEPTH, f"deeper than {MAX_SCHEMA_DEPTH}"),
        ("json_schema", "[" * 5000 + "]" * 5000, "nests too deeply"),  # past what the JSON parser reads
        ("json_schema", "{not json", "not valid JSON"),
        ("regex", "a" * (128 * 1024 + 1), "characters long"),
        ("grammar", {"start": "a"}, "must be a string"),
    ],
)
def test_specifications_past_the_limits_are_refused_naming_their_field(kind: str, spec: object, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        spec_text("guided_x", kind, spec)
    assert caught.value.param == "guided_x" and fragment in str(caught.value)


def test_specifications_just_within_the_limits_pass() -> None:
    nested = "[" * (MAX_SCHEMA_DEPTH - 1) + "0" + "]" * (MAX_SCHEMA_DEPTH - 1)
    assert spec_text("guided_json", "json_schema", nested) == json.dumps(json.loads(nested))
    assert json.loads(spec_text("guided_choice", "choice", ["x"] * MAX_CHOICES)) == ["x"] * MAX_CHOICES
    assert spec_text("guided_json", "json_schema", {"a": [0] * (MAX_SCHEMA_VALUES - 2)})


def test_a_grammar_that_fails_while_decoding_stops_its_request_with_a_400(embedded: LoadedModel) -> None:
    masks = GrammarMasks(embedded.tokenizer, embedded.model.config.vocab_size)
    state = masks.matcher(llguidance.grammar_from("regex", "[0-9]+"))
    refused = masks.advance(state, embedded.tokenizer.convert_tokens_to_ids("a"))  # past what it allows
    assert isinstance(refused, InvalidRequest) and "grammar limits" in str(refused) and "\n" not in str(refused)
    fault = masks.mask(torch.zeros(embedded.model.config.vocab_size), state)  # the matcher stays in error
    assert isinstance(fault, InvalidRequest)
    fresh = masks.matcher(llguidance.grammar_from("regex", "[0-9]+"))  # a copy of the compiled one: unharmed
    assert masks.mask(torch.zeros(embedded.model.config.vocab_size), fresh) is None
