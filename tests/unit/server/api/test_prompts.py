"""server/api/prompts.py on the tiny model with the synthetic word tokenizer (`t<i>` is token i):
token ids outside the vocabulary are a 400 naming their field; logit_bias keys must be token ids;
completion prompts come in four shapes, one token list per prompt; a text too long to fit the
context is refused by its character count; echo shows strings as given, token ids decoded."""

from __future__ import annotations

import asyncio

import pytest

from qadapter.core.base import BaseModelInfo
from qadapter.core.errors import ContextTooLong, InvalidRequest
from qadapter.core.model import LoadedModel
from qadapter.server.api.prompts import CompletionPrompt, PromptEncoder
from qadapter.testing.synthetic_base import synthetic_tokenizer
from tests.conftest import tiny_model

VOCAB = 512  # the tiny model's; its longest token, "t511", is 4 characters
# (t0, t1 and t2 are special tokens, matched inside any word: "t17" is "t1" "7", so tests avoid such words)
MAX_CONTEXT = 8  # so at most 8 × 4 = 32 characters of text


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    model = tiny_model()
    return LoadedModel(model=model, tokenizer=synthetic_tokenizer(VOCAB), info=BaseModelInfo.from_model(model, "tiny"))


@pytest.fixture
def encoder(loaded: LoadedModel) -> PromptEncoder:
    return PromptEncoder(loaded, max_context=MAX_CONTEXT)


def refused(call: object, error: type[InvalidRequest] = InvalidRequest) -> InvalidRequest:
    with pytest.raises(error) as caught:
        asyncio.run(call) if asyncio.iscoroutine(call) else call()  # type: ignore[operator]
    return caught.value


def test_token_ids_of_the_vocabulary_pass_as_a_tuple(encoder: PromptEncoder) -> None:
    assert encoder.token_ids([0, 5, VOCAB - 1], "stop_token_ids") == (0, 5, VOCAB - 1)
    assert encoder.token_ids([], "stop_token_ids") == ()


@pytest.mark.parametrize("bad", [VOCAB, -1, 10**9])
def test_a_token_id_outside_the_vocabulary_is_a_400_naming_the_field(encoder: PromptEncoder, bad: int) -> None:
    error = refused(lambda: encoder.token_ids([3, bad], "stop_token_ids"))
    assert error.param == "stop_token_ids" and f"[0, {VOCAB})" in str(error)


def test_logit_bias_becomes_sorted_token_id_pairs(encoder: PromptEncoder) -> None:
    assert encoder.logit_bias({"17": 5.0, "3": -100.0, "511": 0.5}) == ((3, -100.0), (17, 5.0), (511, 0.5))
    assert encoder.logit_bias({}) == ()


@pytest.mark.parametrize("key", ["hello", "1.5", "", "0x10"])
def test_a_logit_bias_key_that_is_not_a_token_id_is_a_400_naming_logit_bias(encoder: PromptEncoder, key: str) -> None:
    error = refused(lambda: encoder.logit_bias({"5": 1.0, key: 1.0}))
    assert error.param == "logit_bias" and "must be token ids" in str(error)


@pytest.mark.parametrize("key", [str(VOCAB), "-1"])
def test_a_logit_bias_token_outside_the_vocabulary_is_a_400_naming_logit_bias(encoder: PromptEncoder, key: str) -> None:
    error = refused(lambda: encoder.logit_bias({key: 1.0}))
    assert error.param == "logit_bias" and f"[0, {VOCAB})" in str(error)


@pytest.mark.parametrize(
    ("prompt", "ids"),
    [
        ("t5 t37", [[5, 37]]),  # one string
        (["t5", "t6 t7"], [[5], [6, 7]]),  # strings
        ([5, 17, 511], [[5, 17, 511]]),  # one token list
        ([[5], [6, 7]], [[5], [6, 7]]),  # token lists
    ],
)
def test_each_of_the_four_prompt_shapes_gives_one_token_list_per_prompt(
    encoder: PromptEncoder, prompt: CompletionPrompt, ids: list[list[int]]
) -> None:
    assert asyncio.run(encoder.completion(prompt)) == ids


@pytest.mark.parametrize("prompt", [[5, VOCAB], [[5], [6, -1]], [[VOCAB]]])
def test_a_prompt_token_outside_the_vocabulary_is_a_400_naming_prompt(
    encoder: PromptEncoder, prompt: CompletionPrompt
) -> None:
    assert refused(encoder.completion(prompt)).param == "prompt"


@pytest.mark.parametrize("prompt", [[], ()])
def test_an_empty_prompt_list_is_a_400_naming_prompt(encoder: PromptEncoder, prompt: CompletionPrompt) -> None:
    error = refused(encoder.completion(prompt))
    assert error.param == "prompt" and "must not be empty" in str(error)


def test_a_text_of_exactly_the_character_budget_is_tokenised(encoder: PromptEncoder) -> None:
    text = "t9 " * 10 + "t9"  # 32 characters
    assert len(text) == 32
    assert asyncio.run(encoder.completion(text)) == [[9] * 11]


@pytest.mark.parametrize("prompt", ["t1 " * 11, ["t1 t2 t3 t4 t5 t6", "t7 t8 t9 t10 t11 t12"]])
def test_text_past_what_the_context_can_hold_is_context_too_long_before_tokenising(
    loaded: LoadedModel, prompt: CompletionPrompt, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder = PromptEncoder(loaded, max_context=MAX_CONTEXT)
    monkeypatch.setattr(encoder, "_tokenize", lambda _: pytest.fail("tokenised a text it had to refuse"))
    error = refused(encoder.completion(prompt), ContextTooLong)
    assert error.param == "prompt" and error.code == "context_length_exceeded"
    assert "more than any prompt of this model's context can (32)" in str(error)


def test_token_id_prompts_are_not_held_to_the_character_budget(encoder: PromptEncoder) -> None:
    assert asyncio.run(encoder.completion([[7] * 40, [8] * 40])) == [[7] * 40, [8] * 40]


def test_the_character_budget_follows_the_longest_token_and_the_context(loaded: LoadedModel) -> None:
    wider = PromptEncoder(loaded, max_context=2 * MAX_CONTEXT)
    assert asyncio.run(wider.completion("t1 " * 11)) == [[1] * 11]


def test_a_chat_is_templated_and_tokenised(encoder: PromptEncoder) -> None:
    ids = asyncio.run(encoder.chat([{"role": "user", "content": "t5 t6"}]))
    assert ids == [0, 5, 6, 1, 0]  # "user t5 t6 t1 assistant": the roles are unknown words, t0


def test_a_chat_too_long_for_the_context_is_context_too_long_naming_messages(encoder: PromptEncoder) -> None:
    messages = [{"role": "system", "content": "t1 " * 6}, {"role": "user", "content": "t2 " * 6}]  # 36 characters
    error = refused(encoder.chat(messages), ContextTooLong)
    assert error.param == "messages"


def test_echo_shows_strings_as_given_and_token_ids_decoded(encoder: PromptEncoder) -> None:
    strings = ["t5  t6", "T7"]  # not what decoding their ids would give ("t5 t6", "t0")
    assert asyncio.run(encoder.texts(strings, asyncio.run(encoder.completion(strings)))) == strings
    one_list = [5, 37]
    assert asyncio.run(encoder.texts(one_list, [[5, 37]])) == ["t5 t37"]
    lists = [[5], [6, 7]]
    assert asyncio.run(encoder.texts(lists, lists)) == ["t5", "t6 t7"]
    assert asyncio.run(encoder.texts("t9", [[9]])) == ["t9"]
