"""Log-probabilities of the served policy through the official `openai` client, against a hand
computation on the model's own logits; chat and completions, streamed and not, base and adapter."""

from __future__ import annotations

import math

import httpx
import openai
import pytest
import torch

from qadapter.core.model import LoadedModel
from qadapter.testing.server_process import ServerProcess
from tests.e2e.conftest import KEY

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
        ("chat", {"echo": True}, "echo"),
    ],
)
def test_out_of_range_logprobs_are_refused_by_name(client: openai.OpenAI, route: str, extra: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        if route == "chat":
            client.chat.completions.create(model=BASE, messages=QUESTION, max_tokens=2, extra_body=extra)
        else:
            client.completions.create(model=BASE, prompt="Hi", max_tokens=2, extra_body=extra)
    assert caught.value.param == param


PROMPT = "The capital of France is"


def test_echo_gives_the_prompt_and_its_logprobs_first_null(client: openai.OpenAI, embedded: LoadedModel) -> None:
    """As the legacy API: the text starts with the prompt; its tokens come first in `logprobs`, the
    first with a null log-probability; the rest equal the base model's own, computed by hand."""
    ids = embedded.tokenizer(PROMPT).input_ids
    choice = client.completions.create(
        model=BASE, prompt=PROMPT, max_tokens=4, temperature=0, echo=True, logprobs=2
    ).choices[0]
    assert choice.text.startswith(PROMPT) and len(choice.text) > len(PROMPT)
    logprobs = choice.logprobs
    assert logprobs.tokens[: len(ids)] == [embedded.tokenizer.decode([t]) for t in ids]
    assert len(logprobs.tokens) == len(ids) + 4
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    with torch.no_grad():
        expected = torch.log_softmax(embedded.model(torch.tensor([ids])).logits[0].float(), dim=-1)
    hand = [float(expected[t - 1, ids[t]]) for t in range(1, len(ids))]
    assert logprobs.token_logprobs[1 : len(ids)] == pytest.approx(hand, abs=2e-3)
    assert all(len(top) <= 2 for top in logprobs.top_logprobs[1:])
    assert all(choice.text[offset:].startswith(token) for token, offset in zip(logprobs.tokens, logprobs.text_offset))


def test_echo_scores_a_continuation_as_the_adapter_generated_it(client: openai.OpenAI, embedded: LoadedModel) -> None:
    """What evaluation tools do (echo, max_tokens 0, token-id prompts): the prompt log-probabilities of
    the adapter's own greedy continuation equal those it reported while generating it, for a Q-adapter
    with its manifest's α/ω and with a request's own."""
    ids = embedded.tokenizer(PROMPT).input_ids
    compared = 0
    for knobs in ({}, {"alpha": 2.0, "omega": 0.5}):
        generated = client.completions.create(
            model="wild", prompt=ids, max_tokens=5, temperature=0, logprobs=1, extra_body={**knobs, "ignore_eos": True}
        ).choices[0]
        continuation = embedded.tokenizer(generated.text, add_special_tokens=False).input_ids
        done = client.completions.create(
            model="wild", prompt=[ids + continuation], max_tokens=0, echo=True, logprobs=0, extra_body=knobs
        )
        choice = done.choices[0]
        assert choice.text == embedded.tokenizer.decode(ids + continuation)
        assert choice.finish_reason == "length" and done.usage.completion_tokens == 0
        scored = choice.logprobs.token_logprobs
        assert len(scored) == len(ids) + len(continuation)
        if len(continuation) == 5:  # the text re-tokenises to the same tokens (it nearly always does)
            assert scored[len(ids) :] == pytest.approx(generated.logprobs.token_logprobs, abs=1e-3)
            compared += 1
    assert compared, "no continuation re-tokenised to the generated tokens: nothing was compared"


def test_echo_streams_the_prompt_in_its_first_chunk(client: openai.OpenAI) -> None:
    arguments = {"model": "bold", "prompt": [PROMPT, "Hello"], "max_tokens": 3, "temperature": 0, "echo": True}
    whole = client.completions.create(**arguments, logprobs=1).choices
    chunks = list(client.completions.create(**arguments, logprobs=1, stream=True))
    for index, prompt in enumerate((PROMPT, "Hello")):
        mine = [c.choices[0] for c in chunks if c.choices[0].index == index]
        assert mine[0].text.startswith(prompt)
        assert "".join(c.text for c in mine) == whole[index].text
        streamed = [lp for c in mine if c.logprobs for lp in c.logprobs.token_logprobs]
        assert streamed[0] is None
        assert streamed[1:] == pytest.approx(whole[index].logprobs.token_logprobs[1:], abs=1e-5)


def test_max_tokens_zero_needs_echo(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=BASE, prompt=PROMPT, max_tokens=0)
    assert caught.value.param == "max_tokens"
    echoed = client.completions.create(model=BASE, prompt=PROMPT, max_tokens=0, echo=True)
    assert echoed.choices[0].text == PROMPT and echoed.choices[0].logprobs is None
    chunks = list(
        client.completions.create(
            model="wild",
            prompt=PROMPT,
            max_tokens=0,
            echo=True,
            logprobs=1,
            n=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    for index in (0, 1):
        (mine,) = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        assert mine.text == PROMPT and mine.finish_reason == "length"
        assert len(mine.logprobs.token_logprobs) == len(mine.logprobs.tokens) > 1
    assert chunks[-1].usage.completion_tokens == 0
