"""Log-probabilities of the served policy through the official `openai` client, against a hand
computation on the model's own logits; chat and completions, streamed and not, base and adapter."""

from __future__ import annotations

import math

import httpx
import openai
import pytest
import torch

from bench.server_process import ServerProcess
from qadapter.core.model import LoadedModel
from tests.e2e.conftest import KEY

pytestmark = pytest.mark.e2e
BASE = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)


def test_chat_logprobs_are_the_base_models_own(
    server: ServerProcess, client: openai.OpenAI, embedded: LoadedModel
) -> None:
    done = client.chat.completions.create(
        model=BASE, messages=QUESTION, max_tokens=5, temperature=0, logprobs=True, top_logprobs=5
    )
    entries = done.choices[0].logprobs.content
    assert len(entries) == 5
    ids = httpx.post(
        f"{server.url}/tokenize", json={"model": BASE, "messages": QUESTION}, headers={"Authorization": f"Bearer {KEY}"}
    ).json()["tokens"]
    with torch.no_grad():
        for entry in entries:  # greedy: the hand computation follows the argmax, as the server did
            logits = embedded.model(torch.tensor([ids])).logits[0, -1].float()
            expected = torch.log_softmax(logits, dim=-1)
            top = torch.topk(expected, 5)
            token = int(top.indices[0])
            assert entry.token == embedded.tokenizer.decode([token])
            assert entry.logprob == pytest.approx(float(expected[token]), abs=2e-3)
            assert [t.logprob for t in entry.top_logprobs] == pytest.approx(top.values.tolist(), abs=2e-3)
            assert entry.bytes == list(entry.token.encode())
            ids.append(token)


def test_a_q_adapter_reports_its_own_policy(client: openai.OpenAI) -> None:
    def first_entry(model: str) -> openai.types.chat.ChatCompletionTokenLogprob:
        done = client.chat.completions.create(
            model=model, messages=QUESTION, max_tokens=1, temperature=0, logprobs=True, top_logprobs=20
        )
        return done.choices[0].logprobs.content[0]

    base, bold = first_entry(BASE), first_entry("bold")
    assert bold.logprob == bold.top_logprobs[0].logprob  # greedy picks the likeliest under the adapter's policy
    assert sum(math.exp(t.logprob) for t in bold.top_logprobs) <= 1 + 1e-4
    assert [t.logprob for t in bold.top_logprobs] != pytest.approx([t.logprob for t in base.top_logprobs], abs=1e-3)


def test_the_stop_token_has_no_logprob_and_the_tokens_spell_the_answer(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(model=BASE, messages=QUESTION, max_tokens=30, temperature=0, logprobs=True)
    assert done.choices[0].finish_reason == "stop"
    entries = done.choices[0].logprobs.content
    assert "".join(e.token for e in entries) == done.choices[0].message.content
    assert all(e.top_logprobs == [] for e in entries)


def test_streamed_logprobs_equal_the_whole_ones(client: openai.OpenAI) -> None:
    arguments = {"model": "wild", "messages": QUESTION, "max_tokens": 8, "temperature": 0, "logprobs": True}
    whole = client.chat.completions.create(**arguments, top_logprobs=2).choices[0].logprobs.content
    chunks = client.chat.completions.create(**arguments, top_logprobs=2, stream=True)
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, e.top_logprobs[1].token) for e in streamed] == [(e.token, e.top_logprobs[1].token) for e in whole]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in whole], abs=1e-5)


def test_completions_logprobs_have_the_legacy_shape(client: openai.OpenAI) -> None:
    for stream in (False, True):
        arguments = {"model": BASE, "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}
        if stream:
            chunks = list(client.completions.create(**arguments, logprobs=3, stream=True))
            text = "".join(c.choices[0].text for c in chunks)
            parts = [c.choices[0].logprobs for c in chunks if c.choices[0].logprobs]
            tokens = [t for p in parts for t in p.tokens]
            offsets = [o for p in parts for o in p.text_offset]
            tops = [t for p in parts for t in p.top_logprobs]
        else:
            choice = client.completions.create(**arguments, logprobs=3).choices[0]
            text, logprobs = choice.text, choice.logprobs
            tokens, offsets, tops = logprobs.tokens, logprobs.text_offset, logprobs.top_logprobs
            assert len(logprobs.token_logprobs) == 6 and all(lp <= 0 for lp in logprobs.token_logprobs)
        assert "".join(tokens) == text and len(tokens) == 6
        assert offsets == [sum(len(t) for t in tokens[:i]) for i in range(6)]
        assert all(len(top) <= 3 and tokens[i] in top for i, top in enumerate(tops))  # greedy: the token is a top one


@pytest.mark.parametrize(
    ("route", "extra", "param"),
    [
        ("chat", {"top_logprobs": 3}, "top_logprobs"),
        ("chat", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("completions", {"logprobs": 6}, "logprobs"),
        ("completions", {"logprobs": 2, "echo": True}, "echo"),
    ],
)
def test_out_of_range_logprobs_are_refused_by_name(client: openai.OpenAI, route: str, extra: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        if route == "chat":
            client.chat.completions.create(model=BASE, messages=QUESTION, max_tokens=2, extra_body=extra)
        else:
            client.completions.create(model=BASE, prompt="Hi", max_tokens=2, extra_body=extra)
    assert caught.value.param == param
