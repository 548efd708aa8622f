"""Sampling controls through the official `openai` client on a real server: each changes greedy output
the way it should on a prompt built to show it, for the base model and a Q-adapter alike; fields the
server cannot honour are refused by name, unknown ones ignored and listed."""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from qadapter.core.model import LoadedModel
from qadapter.testing.server_process import ServerProcess
from tests.e2e.conftest import KEY

BASE = "smollm2-135m-instruct"
FRUITS = "The list of fruits: apple, banana,"  # the model goes on listing, and soon repeats itself
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)


def repeats(client: openai.OpenAI, model: str = BASE, **controls: object) -> int:
    """Words of a greedy continuation of FRUITS that repeat an earlier one."""
    done = client.completions.create(
        model=model, prompt=FRUITS, max_tokens=24, temperature=0, extra_body={"ignore_eos": True, **controls}
    )
    words = re.findall(r"\w+", done.choices[0].text.lower())
    return len(words) - len(set(words))


def test_penalties_make_repeats_rarer_and_a_negative_one_more_common(client: openai.OpenAI) -> None:
    plain = repeats(client)
    assert plain >= 3  # the prompt shows what it should
    assert repeats(client, frequency_penalty=2.0) < plain
    assert repeats(client, presence_penalty=2.0) < plain
    assert repeats(client, repetition_penalty=1.3) < plain
    assert repeats(client, frequency_penalty=-2.0) > plain


def test_penalties_apply_to_a_q_adapter_too(client: openai.OpenAI) -> None:
    assert repeats(client, "zero", frequency_penalty=-2.0) > repeats(client, "zero")


def paris_tokens(embedded: LoadedModel) -> dict[str, float]:
    return {str(t): -100.0 for word in ("Paris", " Paris") for t in embedded.tokenizer.encode(word)[:1]}


@pytest.mark.parametrize("model", [BASE, "bold"])
def test_logit_bias_bans_and_forces_tokens(client: openai.OpenAI, embedded: LoadedModel, model: str) -> None:
    def answer(**extra: object) -> str:
        done = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=12, temperature=0, **extra)
        return done.choices[0].message.content or ""

    if model == BASE:
        assert "Paris" in answer()
    assert "Paris" not in answer(logit_bias=paris_tokens(embedded))
    forced = embedded.tokenizer.encode(" banana")[0]
    assert answer(logit_bias={str(forced): 100.0}) == " banana" * 12


def test_min_tokens_holds_back_the_end(client: openai.OpenAI) -> None:
    short = client.chat.completions.create(model=BASE, messages=QUESTION, max_tokens=30, temperature=0)
    assert short.usage.completion_tokens < 20 and short.choices[0].finish_reason == "stop"
    held = client.chat.completions.create(
        model=BASE, messages=QUESTION, max_tokens=30, temperature=0, extra_body={"min_tokens": 20}
    )
    assert held.usage.completion_tokens >= 20


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"echo": True}, "echo"),
        ({"logit_bias": {"word": 5}}, "logit_bias"),
        ({"logit_bias": {"10": 101}}, "logit_bias"),
        ({"logit_bias": {"99999999": 1}}, "logit_bias"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"frequency_penalty": 3}, "frequency_penalty"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"min_tokens": 5, "max_tokens": 4}, "min_tokens"),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_name(client: openai.OpenAI, extra: dict, param: str) -> None:
    arguments = {"model": BASE, "messages": QUESTION, "max_tokens": 8, "extra_body": extra}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**arguments)
    assert caught.value.param == param and param in caught.value.message


def test_a_plain_text_response_format_is_what_the_server_does_anyway(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(
        model=BASE, messages=QUESTION, max_tokens=8, temperature=0, response_format={"type": "text"}
    )
    assert done.choices[0].message.content


def test_unknown_fields_are_ignored_and_listed(server: ServerProcess) -> None:
    body = {"model": BASE, "messages": QUESTION, "max_tokens": 2, "mystery": 1, "bad\nname": 2}
    response = httpx.post(
        f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
    )
    assert response.status_code == 200
    assert response.headers["x-qadapter-ignored-fields"] == "mystery"  # a name unsafe in a header is left out
