"""Hardening II on a real server: each hostile request (bench/hostile_cases.py, and the cases below)
gets its 4xx (or, for a poisoned adapter, its own 500) while four normal streams run beside it and
finish with the tokens they give alone; the server process never dies."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import httpx
import jsonschema
import pytest

from qadapter.core.model import LoadedModel
from qadapter.testing.hostile_cases import ASK, BASE, CASES, Hostile
from qadapter.testing.server_process import ServerProcess
from qadapter.testing.synthetic_adapters import POISON_MAX_WEIGHT, poisoned_adapter, random_adapter
from tests.e2e.conftest import KEY

T = TypeVar("T")
AUTH = {"Authorization": f"Bearer {KEY}"}
NORMAL = [
    (BASE, "Name three colours."),
    ("bold", "Write a short line about the sea."),
    ("zero", "What is two plus two?"),
    (BASE, "Say hello in French."),
]
WEATHER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    },
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, embedded: LoadedModel) -> Iterator[ServerProcess]:
    """A server with a poisoned adapter (finite weights so large that its scores are NaN: it starts
    only because --max-lora-weight is raised past them) beside two sound ones."""
    store = tmp_path_factory.mktemp("hostile-store")
    poisoned_adapter(store / "poison", embedded.info)
    random_adapter(store / "bold", embedded.info, name="bold", b_std=0.5, seed=1)
    random_adapter(store / "zero", embedded.info, name="zero")
    flags = ("--api-keys", KEY, "--max-lora-weight", str(POISON_MAX_WEIGHT))
    process = ServerProcess(store, tmp_path_factory.mktemp("hostile-logs") / "server.log", *flags)
    yield process
    assert process.stop() == 0


def stream_text(server: ServerProcess, model: str, question: str, started: threading.Event | None = None) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 24}
    body |= {"temperature": 0, "ignore_eos": True, "stream": True}
    text = ""
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, headers=AUTH, timeout=300) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                text += json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                if started is not None and text:
                    started.set()
    return text


@pytest.fixture(scope="module")
def references(hostile: ServerProcess) -> list[str]:
    """Each normal stream's greedy text, alone."""
    return [stream_text(hostile, model, question) for model, question in NORMAL]


def beside_normal_streams(server: ServerProcess, references: list[str], bad: Callable[[], T]) -> T:
    """`bad()` sent once four normal streams have started; they must end as they do alone."""
    texts: list[str] = [""] * len(NORMAL)
    started = [threading.Event() for _ in NORMAL]

    def run(i: int) -> None:
        texts[i] = stream_text(server, *NORMAL[i], started=started[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(NORMAL))]
    for thread in threads:
        thread.start()
    for event in started:
        event.wait(timeout=120)
    outcome = bad()
    for thread in threads:
        thread.join()
    assert texts == references
    assert server.process.poll() is None  # it never died
    return outcome


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_a_hostile_request_gets_its_4xx_and_hurts_no_stream(
    hostile: ServerProcess, references: list[str], case: Hostile
) -> None:
    response = beside_normal_streams(hostile, references, lambda: case.send(hostile.url, KEY))
    assert response.status_code == case.status, response.text[:500]
    error = response.json()["error"]
    assert error["code"] == case.code and case.message in error["message"], error["message"]
    assert "non-verbose" not in error["message"] and "\n" not in error["message"]  # no parser internals


def test_a_poisoned_adapter_fails_its_own_request_only(hostile: ServerProcess, references: list[str]) -> None:
    body = {"model": "poison", "messages": ASK, "max_tokens": 8, "temperature": 0}
    post = lambda: httpx.post(f"{hostile.url}/v1/chat/completions", json=body, headers=AUTH, timeout=120)  # noqa: E731
    response = beside_normal_streams(hostile, references, post)
    assert response.status_code == 500 and response.json()["error"]["code"] == "request_fault"
    # the slots its rows left are reused: whatever joins them next decodes as it does alone
    assert beside_normal_streams(hostile, references, post).status_code == 500
    assert [stream_text(hostile, model, question) for model, question in NORMAL] == references


def tool_answer(server: ServerProcess, stream: bool, **fields: object) -> tuple[dict, list[str]]:
    """The non-streamed choice, or the streamed lines (and the last chunk's choice)."""
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    body = {"model": BASE, "messages": question, "tools": WEATHER_TOOLS, "tool_choice": "required"}
    body |= {"temperature": 0, "max_tokens": 100, **fields}
    if not stream:
        response = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=AUTH, timeout=120)
        assert response.status_code == 200, response.text
        return response.json()["choices"][0], []
    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions", json={**body, "stream": True}, headers=AUTH, timeout=120
    ) as r:
        lines = [line for line in r.iter_lines() if line]
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    return chunks[-1]["choices"][0], lines


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_forced_tool_call_cut_by_a_stop_ends_with_stop(
    hostile: ServerProcess, references: list[str], stream: bool
) -> None:
    whole, _ = tool_answer(hostile, stream=False)
    assert whole["finish_reason"] == "tool_calls"
    arguments = whole["message"]["tool_calls"][0]["function"]["arguments"]
    stop_ids = httpx.post(
        f"{hostile.url}/tokenize", json={"model": BASE, "prompt": arguments}, headers=AUTH, timeout=60
    ).json()["tokens"]
    for cut in ({"stop": ['"arguments"']}, {"stop_token_ids": [stop_ids[len(stop_ids) // 2]]}):
        choice, lines = beside_normal_streams(hostile, references, lambda cut=cut: tool_answer(hostile, stream, **cut))
        key = "delta" if stream else "message"
        assert choice["finish_reason"] == "stop" and not choice[key].get("tool_calls"), choice
        if stream:
            assert lines[-1] == "data: [DONE]" and not any('"error"' in line for line in lines)
        else:
            assert choice["message"]["content"]  # the text it had, as a length cut gives


def test_a_schema_ending_in_an_integer_ends(hostile: ServerProcess, references: list[str]) -> None:
    """The embedded model repeats a digit for ever where an integer has no bound; served integers
    stay in JSON's interoperable range, so it must close the object."""
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    question = [{"role": "user", "content": "Give the capital of France and its population as JSON."}]
    for layout in ({}, {"structured_outputs": {"disable_any_whitespace": False}}):
        response_format = {"type": "json_schema", "json_schema": {"name": "city", "schema": schema}}
        body = {"model": BASE, "messages": question, "max_tokens": 100, "temperature": 0}
        body |= {"response_format": response_format, **layout}
        post = lambda body=body: httpx.post(f"{hostile.url}/v1/chat/completions", json=body, headers=AUTH, timeout=120)  # noqa: E731
        choice = beside_normal_streams(hostile, references, post).json()["choices"][0]
        assert choice["finish_reason"] == "stop", choice
        jsonschema.validate(json.loads(choice["message"]["content"]), schema)


def test_a_long_scored_prompt_does_not_hold_others_back(hostile: ServerProcess, references: list[str]) -> None:
    """An 8,000-token prompt scored with echo takes many chunks to prefill; a short request sent
    while it runs joins between them and is answered before it, and the streams running beside it
    go on."""
    done: dict[str, float] = {}

    def long() -> None:
        body = {"model": BASE, "prompt": list(range(1000, 9000)), "echo": True, "logprobs": 1, "max_tokens": 1}
        response = httpx.post(f"{hostile.url}/v1/completions", json=body, headers=AUTH, timeout=600)
        assert response.status_code == 200, response.text[:300]
        done["long"] = time.monotonic()

    def long_then_short() -> None:
        thread = threading.Thread(target=long)
        thread.start()
        time.sleep(2)  # its prefill is under way (it takes tens of seconds on 2 cores)
        body = {"model": BASE, "messages": ASK, "max_tokens": 4, "temperature": 0}
        response = httpx.post(f"{hostile.url}/v1/chat/completions", json=body, headers=AUTH, timeout=600)
        assert response.status_code == 200
        done["short"] = time.monotonic()
        thread.join()

    beside_normal_streams(hostile, references, long_then_short)
    assert done["short"] < done["long"]


def test_a_huge_declared_body_without_a_key_is_refused_at_once(hostile: ServerProcess, references: list[str]) -> None:
    def declare(path: str) -> bytes:
        with socket.create_connection(("127.0.0.1", hostile.port), timeout=30) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 300000000\r\n\r\n".encode())
            return sock.recv(65536)

    for path in ("/detokenize", "/tokenize"):
        answer = beside_normal_streams(hostile, references, lambda path=path: declare(path))
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


def test_a_big_detokenize_within_the_limit_is_answered(hostile: ServerProcess, references: list[str]) -> None:
    body = {"model": BASE, "tokens": [42] * 500_000}  # ~4 MB of JSON: decoded off the event loop
    post = lambda: httpx.post(f"{hostile.url}/detokenize", json=body, headers=AUTH, timeout=120)  # noqa: E731
    response = beside_normal_streams(hostile, references, post)
    assert response.status_code == 200 and len(response.json()["prompt"]) >= 500_000


def test_a_complete_grammar_wins_over_min_tokens(hostile: ServerProcess, references: list[str]) -> None:
    """Once the choice is complete only its end is allowed, which min_tokens forbids: the grammar
    wins (it ends with stop) instead of a 500 for a step with no token left."""
    body = {"model": BASE, "messages": ASK, "max_tokens": 20, "temperature": 0}
    body |= {"guided_choice": ["Paris", "Lyon"], "min_tokens": 10}
    post = lambda: httpx.post(f"{hostile.url}/v1/chat/completions", json=body, headers=AUTH, timeout=120)  # noqa: E731
    response = beside_normal_streams(hostile, references, post)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["content"] in ("Paris", "Lyon")
