"""The OpenAI-compatible API on a real server (embedded SmolLM2), driven by the official `openai` client."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import httpx
import openai
import pytest

from qadapter.adapters.format import validate
from qadapter.core.decode import DecodeParams, Stream, decode
from qadapter.core.lora import AdapterHost
from qadapter.core.model import load_base_model
from qadapter.core.settings import Settings
from qadapter.testing.server_process import ServerProcess
from tests.e2e.conftest import KEY, eventually

BASE = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)


def chat(client: openai.OpenAI, model: str, **kwargs: object) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(
        **{"model": model, "messages": QUESTION, "max_tokens": 16, "temperature": 0, **kwargs}
    )


def test_models_lists_the_base_and_every_adapter(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {BASE, "bold", "wild", "zero"}
    assert all(models[name].model_extra["parent"] == BASE for name in ("bold", "wild", "zero"))


def test_chat_on_the_base_and_on_adapters(client: openai.OpenAI) -> None:
    responses = {model: chat(client, model) for model in (BASE, "bold", "wild", "zero")}
    answers = {model: r.choices[0].message.content for model, r in responses.items()}
    assert "Paris" in answers[BASE]
    assert responses[BASE].choices[0].finish_reason == "stop"  # it ended on EOS, within max_tokens
    assert answers["zero"] == answers[BASE]  # an untrained adapter keeps the base policy exactly
    assert answers["bold"] != answers[BASE] and answers["wild"] != answers[BASE]
    assert answers["bold"] != answers["wild"]


def test_greedy_output_equals_a_solo_reference_run(client: openai.OpenAI, adapters_dir: Path) -> None:
    # A model of our own (the host changes it in place), on the server's device and dtype: a bf16 run on
    # a GPU need not pick the same greedy tokens as an fp32 run on the CPU.
    loaded = load_base_model(Settings())
    host = AdapterHost(loaded.model)
    adapter = validate(adapters_dir / "wild", loaded.info)
    host.load(adapter.name, adapter.read_weights())
    prompt = "The three most important inventions are"
    ids = loaded.tokenizer(prompt).input_ids
    stream = Stream("wild", adapter.manifest.knobs)
    ((expected,),) = decode(host, [ids], [stream], DecodeParams(max_tokens=20), loaded.stop_token_ids)
    got = client.completions.create(model="wild", prompt=prompt, max_tokens=20, temperature=0)
    assert got.choices[0].text == loaded.tokenizer.decode(expected, skip_special_tokens=True)


def test_alpha_and_omega_knobs_change_the_policy(client: openai.OpenAI) -> None:
    plain = chat(client, "bold").choices[0].message.content
    sharper = chat(client, "bold", extra_body={"alpha": 0.3, "omega": 2.0}).choices[0].message.content
    assert sharper != plain


def test_streamed_chat_matches_the_full_response(client: openai.OpenAI) -> None:
    full = chat(client, "wild", max_tokens=24)
    chunks = list(chat(client, "wild", max_tokens=24, stream=True, stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in content) == full.choices[0].message.content
    reasons = [c.choices[0].finish_reason for c in content if c.choices[0].finish_reason]
    assert reasons == [full.choices[0].finish_reason]
    assert all(c.usage is None for c in content)
    assert chunks[-1].choices == [] and chunks[-1].usage == full.usage


def test_streamed_completion_without_usage(client: openai.OpenAI) -> None:
    full = client.completions.create(model="bold", prompt="Once upon a time", max_tokens=12, temperature=0)
    chunks = list(
        client.completions.create(model="bold", prompt="Once upon a time", max_tokens=12, temperature=0, stream=True)
    )
    assert "".join(c.choices[0].text for c in chunks) == full.choices[0].text
    assert all(c.usage is None for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["length"]


def test_raw_stream_ends_with_done(server: ServerProcess) -> None:
    body = {"model": "zero", "messages": QUESTION, "max_tokens": 4, "stream": True}
    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
    ) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_n_choices_and_prompt_lists(client: openai.OpenAI) -> None:
    sampled = client.chat.completions.create(
        model="bold", messages=QUESTION, max_tokens=8, n=3, temperature=1.0, seed=7
    )
    assert [c.index for c in sampled.choices] == [0, 1, 2]
    batch = client.completions.create(model=BASE, prompt=["Hello", "Goodbye"], max_tokens=4, temperature=0)
    assert len(batch.choices) == 2
    assert batch.usage.completion_tokens == 8


def test_seeded_sampling_repeats(client: openai.OpenAI) -> None:
    first, second = (chat(client, "wild", temperature=1.0, seed=42).choices[0].message.content for _ in range(2))
    assert first == second


@pytest.mark.parametrize(
    ("kwargs", "error", "status", "code", "param"),
    [
        ({"model": "nope"}, openai.NotFoundError, 404, "model_not_found", "model"),
        ({"temperature": 5}, openai.BadRequestError, 400, "invalid_request_error", "temperature"),
        ({"max_tokens": 0}, openai.BadRequestError, 400, "invalid_request_error", "max_tokens"),
        ({"extra_body": {"alpha": 0}}, openai.BadRequestError, 400, "invalid_request_error", "alpha"),
        ({"extra_body": {"alpha": 2}}, openai.BadRequestError, 400, "invalid_request_error", "omega"),
        ({"extra_body": {"omega": 2}}, openai.BadRequestError, 400, "invalid_request_error", "alpha"),
        ({"extra_body": {"best_of": 3}}, openai.BadRequestError, 400, "invalid_request_error", "best_of"),
        ({"stop": ["a", "b", "c", "d", "e"]}, openai.BadRequestError, 400, "invalid_request_error", "stop"),
        ({"max_tokens": 9000}, openai.BadRequestError, 400, "context_length_exceeded", "max_tokens"),
    ],
)
def test_errors_are_openai_shaped(
    client: openai.OpenAI, kwargs: dict, error: type[openai.APIStatusError], status: int, code: str, param: str
) -> None:
    arguments = {"model": "bold", "messages": QUESTION, "max_tokens": 4, **kwargs}
    with pytest.raises(error) as caught:
        client.chat.completions.create(**arguments)
    assert caught.value.status_code == status
    assert caught.value.code == code
    assert caught.value.param == param


def test_context_error_names_the_limit(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="This model's maximum context length is 8192 tokens"):
        client.completions.create(model=BASE, prompt="hi", max_tokens=9000)


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b"{not json", None),
        (b'{"model": "bold", "messages": "hi"}', "messages"),
        (b'{"model": "bold", "messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}', "max_tokens"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "bold", "messages": [{"role": "wizard", "content": "x"}]}', "messages.0.role"),
    ],
)
def test_malformed_bodies_are_400_not_422(server: ServerProcess, content: bytes, param: str | None) -> None:
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        content=content,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_a_wrong_key_is_401(server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.models.list()
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Basic dGVzdA=="}])
def test_a_missing_key_is_401(server: ServerProcess, headers: dict[str, str]) -> None:
    response = httpx.post(
        f"{server.url}/v1/chat/completions", headers=headers, json={"model": "bold", "messages": QUESTION}
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert "Authorization: Bearer" in response.json()["error"]["message"]


def test_health_ready_and_metrics_are_open(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/ready").status_code == 200
    assert "qadapter_requests_running" in httpx.get(f"{server.url}/metrics").text


def test_client_disconnect_mid_stream_frees_the_request(server: ServerProcess) -> None:
    body = {"model": "bold", "messages": QUESTION, "max_tokens": 400, "stream": True, "ignore_eos": True}
    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
    ) as r:
        lines = r.iter_lines()  # kept: a dropped line iterator closes the response (a disconnect)
        for _ in range(3):
            next(lines)
        assert server.metric("qadapter_requests_running") == 1
    # a step on a loaded CI machine can take 2 s; 400 tokens would take a minute
    assert eventually(lambda: server.metric("qadapter_requests_running") == 0, timeout_s=10)
    assert server.metric("qadapter_batch_rows") == 0


def test_client_disconnect_without_streaming_frees_the_request(server: ServerProcess) -> None:
    body = {"model": "wild", "messages": QUESTION, "max_tokens": 400, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        httpx.post(
            f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=1.5
        )
    # freed within a step of noticing; 400 tokens would take a minute. 10 s: a step on a loaded machine can take 2
    assert eventually(lambda: server.metric("qadapter_requests_running") == 0, timeout_s=10)
    assert server.metric("qadapter_requests_total", adapter="wild", status="499") >= 1


def test_32_concurrent_requests_over_base_and_three_adapters(server: ServerProcess) -> None:
    models = [BASE, "bold", "wild", "zero"]

    async def run() -> list[str]:
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
        calls = [
            client.chat.completions.create(
                model=models[i % 4],
                messages=[{"role": "user", "content": f"Count to {i}."}],
                max_tokens=8,
                temperature=0,
            )
            for i in range(32)
        ]
        return [r.choices[0].finish_reason for r in await asyncio.gather(*calls)]

    assert all(reason in ("stop", "length") for reason in asyncio.run(run()))


def test_metrics_count_the_requests_sent(client: openai.OpenAI, server: ServerProcess) -> None:
    before = {m: server.metric("qadapter_requests_total", adapter=m, status="200") for m in ("zero", "wild")}
    tokens_before = server.metric("qadapter_generation_tokens_total", adapter="zero")
    for _ in range(3):
        chat(client, "zero", max_tokens=5, extra_body={"ignore_eos": True})
    chat(client, "wild", max_tokens=5)
    with pytest.raises(openai.BadRequestError):
        chat(client, "zero", max_tokens=9000)
    assert server.metric("qadapter_requests_total", adapter="zero", status="200") == before["zero"] + 3
    assert server.metric("qadapter_requests_total", adapter="wild", status="200") == before["wild"] + 1
    assert server.metric("qadapter_requests_total", adapter="zero", status="400") >= 1
    assert server.metric("qadapter_generation_tokens_total", adapter="zero") == tokens_before + 15
    assert server.metric("qadapter_adapters_loaded") == 3


def test_full_queue_is_503_with_retry_after(adapters_dir: Path, tmp_path: Path) -> None:
    small = ServerProcess(adapters_dir, tmp_path / "small.log", "--max-running", "1", "--max-waiting", "1")
    try:
        # long enough that it still runs when a loaded CI machine gets to the third request;
        # closing the stream at the end aborts it
        body = {"model": BASE, "messages": QUESTION, "max_tokens": 4000, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", f"{small.url}/v1/chat/completions", json=body, timeout=60) as running:
            first_lines = running.iter_lines()  # kept open: dropping it would close the stream
            next(first_lines)  # the role's chunk: it comes before the engine has admitted the request
            # admitted first, or the first itself, still queued, would pass for the second below
            assert eventually(lambda: small.metric("qadapter_requests_running") == 1, 60), "the first never ran"
            waiting = threading.Thread(
                target=httpx.post,
                args=(f"{small.url}/v1/chat/completions",),
                kwargs={"json": {**body, "stream": False, "max_tokens": 2}, "timeout": 120},
            )
            waiting.start()
            assert eventually(lambda: small.metric("qadapter_requests_waiting") == 1, 60), "the second never queued"
            assert small.metric("qadapter_requests_running") == 1, "the first request no longer runs"
            refused = httpx.post(f"{small.url}/v1/chat/completions", json={**body, "stream": False}, timeout=60)
            assert refused.status_code == 503
            assert int(refused.headers["Retry-After"]) >= 1
            assert refused.json()["error"]["code"] == "overloaded"
        waiting.join()
    finally:
        small.stop()


def test_sigterm_lets_running_requests_finish(adapters_dir: Path, tmp_path: Path) -> None:
    # a grace that 40 tokens fit in even on a loaded CI machine: the test is about finishing, not speed
    server = ServerProcess(adapters_dir, tmp_path / "term.log", "--shutdown-timeout-s", "300")
    body = {"model": "bold", "messages": QUESTION, "max_tokens": 40, "stream": True, "ignore_eos": True}
    events = []
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as stream:
        lines = stream.iter_lines()
        events.append(next(lines))
        server.terminate()
        events += [line for line in lines if line]
    finals = [json.loads(e[6:]) for e in events if e.startswith("data: {")]
    assert [c["choices"][0]["finish_reason"] for c in finals if c["choices"][0]["finish_reason"]] == ["length"]
    assert events[-1] == "data: [DONE]"
    assert server.stop() == 0
