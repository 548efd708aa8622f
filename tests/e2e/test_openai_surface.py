"""The smaller parts of the OpenAI and vLLM surface that tools rely on, on a real server: models/{id},
x-request-id, /tokenize, /detokenize, /tokenizer_info, /version, and the order and words of errors."""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from qadapter.core.model import LoadedModel
from qadapter.testing.server_process import ServerProcess
from tests.e2e.conftest import KEY

BASE = "smollm2-135m-instruct"
AUTH = {"Authorization": f"Bearer {KEY}"}
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)


def test_models_retrieve_answers_for_the_base_and_each_adapter(client: openai.OpenAI) -> None:
    assert client.models.retrieve(BASE).id == BASE
    bold = client.models.retrieve("bold")
    assert (bold.id, bold.owned_by, bold.model_extra["parent"], bold.model_extra["version"]) == (
        "bold",
        "qadapter",
        BASE,
        1,
    )
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_every_response_carries_a_request_id(server: ServerProcess) -> None:
    mine = httpx.get(f"{server.url}/v1/models", headers={**AUTH, "x-request-id": "trace-42"})
    assert mine.headers["x-request-id"] == "trace-42"
    made = httpx.get(f"{server.url}/v1/models", headers={**AUTH, "x-request-id": "bad id\twith tab"})
    assert re.fullmatch("[0-9a-f]{32}", made.headers["x-request-id"])
    refused = httpx.get(f"{server.url}/v1/models")  # no key: the gate's own 401
    assert refused.status_code == 401 and re.fullmatch("[0-9a-f]{32}", refused.headers["x-request-id"])


def test_tokenize_counts_as_the_completion_routes_do(
    server: ServerProcess, client: openai.OpenAI, embedded: LoadedModel
) -> None:
    text = "Hello there, general Kenobi."
    tokenized = httpx.post(
        f"{server.url}/tokenize", json={"model": BASE, "prompt": text, "return_token_strs": True}, headers=AUTH
    ).json()
    assert tokenized["tokens"] == embedded.tokenizer(text).input_ids and tokenized["count"] == len(tokenized["tokens"])
    assert tokenized["max_model_len"] == 8192 and "".join(tokenized["token_strs"]).replace("Ġ", " ") == text
    chat = httpx.post(f"{server.url}/tokenize", json={"model": "bold", "messages": QUESTION}, headers=AUTH).json()
    answered = client.chat.completions.create(model="bold", messages=QUESTION, max_tokens=1)
    assert chat["count"] == answered.usage.prompt_tokens
    back = httpx.post(f"{server.url}/detokenize", json={"model": BASE, "tokens": tokenized["tokens"]}, headers=AUTH)
    assert back.json() == {"prompt": text}


@pytest.mark.parametrize(
    ("route", "body", "status", "param"),
    [
        ("/tokenize", {"model": BASE}, 400, "prompt"),
        ("/tokenize", {"model": BASE, "prompt": "a", "messages": QUESTION}, 400, "prompt"),
        ("/tokenize", {"model": "nope", "prompt": "a"}, 404, "model"),
        ("/detokenize", {"model": BASE, "tokens": [49152]}, 400, "tokens"),
        ("/detokenize", {"model": "nope", "tokens": [1]}, 404, "model"),
    ],
)
def test_tokenizer_routes_refuse_bad_input(
    server: ServerProcess, route: str, body: dict, status: int, param: str
) -> None:
    response = httpx.post(f"{server.url}{route}", json=body, headers=AUTH)
    assert response.status_code == status and response.json()["error"]["param"] == param


def test_tokenizer_info_and_version(server: ServerProcess, embedded: LoadedModel) -> None:
    info = httpx.get(f"{server.url}/tokenizer_info", headers=AUTH).json()
    assert info["chat_template"] == embedded.tokenizer.chat_template and info["eos_token"] == "<|im_end|>"
    assert info["vocab_size"] == len(embedded.tokenizer)
    assert httpx.get(f"{server.url}/tokenizer_info").status_code == 401
    assert httpx.get(f"{server.url}/version").json() == {"version": "0.1.0"}


def test_an_unknown_model_is_a_404_before_any_parameter_check(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=QUESTION, temperature=5, max_tokens=-1)
    assert caught.value.code == "model_not_found"


def test_a_non_text_content_part_is_refused_in_plain_words(client: openai.OpenAI) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=BASE, messages=[{"role": "user", "content": [{"type": "text", "text": "What is it?"}, image]}]
        )
    assert caught.value.param == "messages.0.content"
    assert "only text content parts are supported (got image_url)" in caught.value.message


def test_stream_options_need_stream(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=BASE, messages=QUESTION, max_tokens=2, stream_options={"include_usage": True}
        )
    assert caught.value.param == "stream_options"
