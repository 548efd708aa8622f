"""What a hostile or unlucky client throws at a real server: a poisoned adapter, oversized and slow
bodies, slow headers, loosely typed fields, random model names, and a shutdown that outlasts its
grace. Each case fails if its defect comes back, and checks that nothing else was hurt."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from qadapter.core.model import LoadedModel
from qadapter.testing.server_process import ServerProcess
from qadapter.testing.synthetic_adapters import POISON_MAX_WEIGHT, poisoned_adapter, random_adapter
from tests.e2e.conftest import KEY, eventually

BASE = "smollm2-135m-instruct"
AUTH = {"Authorization": f"Bearer {KEY}"}
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
BODY_LIMIT = 1 << 20
READ_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def hardened(tmp_path_factory: pytest.TempPathFactory, embedded: LoadedModel) -> Iterator[ServerProcess]:
    """A server with a poisoned adapter (finite weights so large that its logits are NaN; it starts only
    because --max-lora-weight is raised past them), a 1 MiB body limit and a 2 s read timeout."""
    store = tmp_path_factory.mktemp("hardened-store")
    poisoned_adapter(store / "poison", embedded.info)
    random_adapter(store / "zero", embedded.info, name="zero")
    flags = ("--api-keys", KEY, "--max-request-bytes", str(BODY_LIMIT), "--read-timeout-s", str(READ_TIMEOUT_S))
    flags += ("--max-lora-weight", str(POISON_MAX_WEIGHT))
    process = ServerProcess(store, tmp_path_factory.mktemp("hardened-logs") / "server.log", *flags)
    yield process
    assert process.stop() == 0


def stream_lines(server: ServerProcess, body: dict, lines: list[str]) -> None:
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, headers=AUTH, timeout=120) as r:
        lines += [line for line in r.iter_lines() if line]


def test_a_poisoned_adapter_fails_its_own_requests_only(hardened: ServerProcess) -> None:
    base_lines: list[str] = []
    long_base = {"model": BASE, "messages": QUESTION, "max_tokens": 40, "stream": True, "ignore_eos": True}
    base = threading.Thread(target=stream_lines, args=(hardened, long_base, base_lines))
    base.start()
    time.sleep(0.5)  # the base stream decodes; the poisoned ones join its steps
    poison_lines: list[str] = []
    stream_lines(hardened, {"model": "poison", "messages": QUESTION, "stream": True, "temperature": 1.0}, poison_lines)
    greedy = httpx.post(
        f"{hardened.url}/v1/chat/completions",
        json={"model": "poison", "messages": QUESTION, "temperature": 0},
        headers=AUTH,
        timeout=120,
    )
    base.join()

    assert json.loads(poison_lines[-2][6:])["error"]["code"] == "request_fault" and poison_lines[-1] == "data: [DONE]"
    assert greedy.status_code == 500 and greedy.json()["error"]["code"] == "request_fault"  # not an empty answer
    finals = [json.loads(line[6:]) for line in base_lines if line.startswith("data: {")]
    assert [c["choices"][0]["finish_reason"] for c in finals if c["choices"][0]["finish_reason"]] == ["length"]
    assert base_lines[-1] == "data: [DONE]"
    assert hardened.metric("qadapter_requests_total", adapter="poison", status="500") == 2  # not 499
    assert hardened.metric("qadapter_requests_running") == 0


@pytest.mark.parametrize("declared", [True, False])
def test_a_v1_body_over_the_limit_is_413_before_it_is_parsed(hardened: ServerProcess, declared: bool) -> None:
    oversized = json.dumps({"model": BASE, "messages": [{"role": "user", "content": "x" * (BODY_LIMIT + 10)}]})
    content = oversized.encode() if declared else iter([oversized.encode()])  # an iterator is sent chunked
    response = httpx.post(f"{hardened.url}/v1/chat/completions", content=content, headers=AUTH, timeout=60)
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "payload_too_large"
    keyless = httpx.post(f"{hardened.url}/v1/chat/completions", content=oversized.encode(), timeout=60)
    assert keyless.status_code == 401  # the key is checked before a byte of the body is read


def test_health_answers_while_a_huge_prompt_is_tokenised_and_refused(hardened: ServerProcess) -> None:
    """600k characters pass the character check (they could fit 8192 tokens of 81 characters) and take
    about a second to template and tokenise: in a worker thread, so /health is not held up."""
    text = ("The quick brown fox jumps over the lazy dog. " * 14_000)[:600_000]
    outcome: dict[str, object] = {}

    def huge() -> None:
        body = {"model": BASE, "messages": [{"role": "user", "content": text}]}
        start = time.perf_counter()
        outcome["response"] = httpx.post(f"{hardened.url}/v1/chat/completions", json=body, headers=AUTH, timeout=60)
        outcome["seconds"] = time.perf_counter() - start

    request = threading.Thread(target=huge)
    request.start()
    health_s = []
    with httpx.Client(base_url=hardened.url, timeout=30) as http:
        while request.is_alive():
            start = time.perf_counter()
            assert http.get("/health").status_code == 200
            health_s.append(time.perf_counter() - start)
    request.join()
    response = outcome["response"]
    assert isinstance(response, httpx.Response) and response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    assert len(health_s) >= 3 and max(health_s) < 0.5 * float(outcome["seconds"]), (health_s, outcome["seconds"])


def test_far_too_long_a_prompt_is_refused_without_tokenising(hardened: ServerProcess) -> None:
    body = {"model": BASE, "prompt": "word " * 200_000}  # 1 M characters: more than 8192 tokens can hold
    response = httpx.post(f"{hardened.url}/v1/completions", json=body, headers=AUTH, timeout=60)
    assert response.status_code == 400 and "characters" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": BASE, "messages": QUESTION, "stream": "yes"}, "stream"),
        ({"model": BASE, "prompt": [True, False]}, "prompt"),
        ({"model": BASE, "prompt": ""}, "prompt"),
        ({"model": BASE, "messages": QUESTION, "max_tokens": "5"}, "max_tokens"),
    ],
)
def test_loosely_typed_fields_are_400_not_coerced(hardened: ServerProcess, body: dict, param: str) -> None:
    route = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    response = httpx.post(f"{hardened.url}{route}", json=body, headers=AUTH, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].split(".")[0] == param


def test_unknown_model_names_share_one_metrics_label(hardened: ServerProcess) -> None:
    before_size = len(httpx.get(f"{hardened.url}/metrics").text)
    before = hardened.metric("qadapter_requests_total", adapter="(unknown)", status="404")
    for _ in range(30):
        body = {"model": f"nope-{uuid.uuid4().hex * 60}", "messages": QUESTION}
        assert httpx.post(f"{hardened.url}/v1/chat/completions", json=body, headers=AUTH).status_code == 404
    assert hardened.metric("qadapter_requests_total", adapter="(unknown)", status="404") == before + 30
    assert len(httpx.get(f"{hardened.url}/metrics").text) - before_size < 200  # counters grew, labels did not


def test_headers_that_trickle_in_are_cut_with_408(hardened: ServerProcess) -> None:
    """Slowloris: a header byte every 0.3 s keeps resetting an idle timer, but not the header deadline."""
    with socket.create_connection(("127.0.0.1", hardened.port)) as sock:
        start = time.monotonic()
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        sock.settimeout(0.3)
        answer = b""
        while time.monotonic() - start < READ_TIMEOUT_S * 5:
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                sock.sendall(b"a")
                continue
            if not chunk:
                break
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert READ_TIMEOUT_S - 0.5 <= time.monotonic() - start < READ_TIMEOUT_S + 3


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/tokenize"])
def test_a_body_that_trickles_in_is_408(hardened: ServerProcess, path: str) -> None:
    with socket.create_connection(("127.0.0.1", hardened.port), timeout=READ_TIMEOUT_S * 5) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        sock.sendall(f"{head}Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{".encode())
        answer = b""
        while b"request_timeout" not in answer and (chunk := sock.recv(4096)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer


def test_a_shutdown_past_its_grace_aborts_streams_and_refuses_new_requests(
    embedded: LoadedModel, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    random_adapter(store / "zero", embedded.info, name="zero")
    server = ServerProcess(store, tmp_path / "server.log", "--shutdown-timeout-s", "1")
    body = {"model": "zero", "messages": QUESTION, "max_tokens": 4000, "stream": True, "ignore_eos": True}
    lines: list[str] = []
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=120) as stream:
        received = stream.iter_lines()
        lines.append(next(received))
        server.terminate()
        # draining (not ready) once the signal is handled, between event-loop turns
        assert eventually(lambda: httpx.get(f"{server.url}/ready", timeout=10).status_code == 503, timeout_s=10)
        refused = httpx.post(f"{server.url}/v1/chat/completions", json={**body, "stream": False}, timeout=30)
        lines += [line for line in received if line]  # ends, instead of a cut body
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1  # a new connection, answered
    finals = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert [c["choices"][0]["finish_reason"] for c in finals if c["choices"][0]["finish_reason"]] == ["abort"]
    assert lines[-1] == "data: [DONE]"
    assert server.stop() == 0
