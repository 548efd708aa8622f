"""Our Python client, sync and async, against real servers: every call, streams, typed errors, retries."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from qadapter.client import (
    AsyncQAdapterClient,
    BadRequest,
    ChunkStream,
    Conflict,
    ConnectionFailed,
    ContextTooLong,
    Forbidden,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    QAdapterClient,
    ServerError,
    Timeout,
    Unauthorized,
    Usage,
    sse,
)
from qadapter.testing.server_process import ServerProcess, free_port
from tests.e2e.conftest import ADMIN_KEY, KEY, SMALL_UPLOAD_LIMIT, eventually

BASE = "smollm2-135m-instruct"
QUESTION = "What is the capital of France?"
GREEDY = {"max_tokens": 12, "temperature": 0.0}


@pytest.fixture
def client(server: ServerProcess) -> Iterator[QAdapterClient]:
    with QAdapterClient(server.url, api_key=KEY, max_retries=0) as ours:
        yield ours


@pytest.fixture
def admin(small_admin_server: ServerProcess) -> Iterator[QAdapterClient]:
    with QAdapterClient(small_admin_server.url, api_key=KEY, admin_key=ADMIN_KEY, max_retries=0) as ours:
        yield ours


def is_idle_soon(server: ServerProcess) -> bool:
    return eventually(lambda: server.metric("qadapter_requests_running") == 0, timeout_s=30)


def test_importing_the_client_does_not_import_torch() -> None:
    probe = "import sys, client, client.cli; print(sorted(m for m in ('torch', 'transformers', 'server') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_models_lists_the_base_and_every_adapter(client: QAdapterClient) -> None:
    models = {m.id: m for m in client.models()}
    assert set(models) == {BASE, "bold", "wild", "zero"}
    assert not models[BASE].is_adapter
    assert all(models[name].parent == BASE and models[name].version == 1 for name in ("bold", "wild", "zero"))


def test_chat_and_complete_answer_as_with_the_openai_client(client: QAdapterClient, server: ServerProcess) -> None:
    reference = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    ours = client.chat(QUESTION, model="wild", **GREEDY)
    theirs = reference.chat.completions.create(model="wild", messages=[{"role": "user", "content": QUESTION}], **GREEDY)
    assert ours.text and ours.text == theirs.choices[0].message.content
    assert ours.model == "wild" and ours.choices[0].finish_reason == theirs.choices[0].finish_reason
    assert ours.usage == Usage(theirs.usage.prompt_tokens, theirs.usage.completion_tokens, theirs.usage.total_tokens)

    done = client.complete("Once upon a time", model="bold", max_tokens=10, temperature=0, ignore_eos=True)
    expected = reference.completions.create(
        model="bold", prompt="Once upon a time", max_tokens=10, temperature=0, extra_body={"ignore_eos": True}
    )
    assert done.text == expected.choices[0].text and done.usage.completion_tokens == 10
    assert (
        client.chat(QUESTION, model="bold", alpha=0.3, omega=2.0, **GREEDY).text
        != client.chat(QUESTION, model="bold", **GREEDY).text
    )  # the Q-adapter knobs reach the server
    base = client.chat(QUESTION, model="smollm2-135m-instruct", **GREEDY).text
    assert client.chat(QUESTION, model="bold", strength=0, **GREEDY).text == base  # strength 0 is the base


def test_streams_carry_the_same_answer_and_the_usage(client: QAdapterClient) -> None:
    full = client.chat(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}],
        model="wild",
        max_tokens=16,
        temperature=0,
    )
    chunks = list(
        client.chat(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}],
            model="wild",
            max_tokens=16,
            temperature=0,
            stream=True,
        )
    )
    assert len(chunks) > 2
    assert "".join(c.text for c in chunks) == full.text
    assert [c.finish_reason for c in chunks if c.finish_reason] == [full.choices[0].finish_reason]
    assert chunks[-1].usage == full.usage

    full_pair = client.complete("Hello", model="bold", n=2, max_tokens=6, temperature=0, ignore_eos=True)
    streamed = list(
        client.complete("Hello", model="bold", n=2, max_tokens=6, temperature=0, ignore_eos=True, stream=True)
    )
    for choice in full_pair.choices:
        assert "".join(c.text for c in streamed if c.index == choice.index and c.usage is None) == choice.text


def test_closing_a_stream_early_stops_its_request(client: QAdapterClient, server: ServerProcess) -> None:
    gone_before = server.metric("qadapter_requests_total", adapter="bold", status="499")
    with client.chat(QUESTION, model="bold", max_tokens=400, ignore_eos=True, stream=True) as stream:
        chunks = iter(stream)
        next(chunks)
        assert server.metric("qadapter_requests_running") == 1
    assert is_idle_soon(server)
    assert server.metric("qadapter_requests_total", adapter="bold", status="499") == gone_before + 1  # cut short


@pytest.mark.parametrize(
    ("kwargs", "error", "code", "param"),
    [
        ({"model": "nope"}, NotFound, "model_not_found", "model"),
        ({"model": "bold", "temperature": 5.0}, BadRequest, "invalid_request_error", "temperature"),
        ({"model": "bold", "max_tokens": 9000}, ContextTooLong, "context_length_exceeded", "max_tokens"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_request_errors_are_typed(
    client: QAdapterClient, kwargs: dict, error: type, code: str, param: str, stream: bool
) -> None:
    with pytest.raises(error) as raised:  # a stream raises at the call, before any chunk
        client.chat(QUESTION, stream=stream, **kwargs)
    assert (raised.value.code, raised.value.param) == (code, param)
    assert type(raised.value) is error  # the most specific type: a BadRequest is not a ContextTooLong


def test_key_errors_are_typed(server: ServerProcess, admin: QAdapterClient) -> None:
    with QAdapterClient(server.url, api_key="wrong", max_retries=0) as wrong, pytest.raises(Unauthorized) as raised:
        wrong.models()
    assert raised.value.status == 401
    with (
        QAdapterClient(server.url, api_key=KEY, admin_key="any", max_retries=0) as off,
        pytest.raises(Forbidden) as raised,
    ):
        off.adapters.list()  # the session server has no admin key: its admin routes are off
    assert "QADAPTER_ADMIN_KEY" in str(raised.value)
    with (
        QAdapterClient(admin.base_url, api_key=KEY, admin_key=KEY, max_retries=0) as inference,
        pytest.raises(Forbidden),
    ):
        inference.adapters.list()


def test_a_timeout_is_typed_and_not_retried(server: ServerProcess, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="qadapter.client")
    gone_before = server.metric("qadapter_requests_total", adapter="bold", status="499")
    with QAdapterClient(server.url, api_key=KEY, timeout=0.5, max_retries=3) as impatient, pytest.raises(Timeout):
        impatient.chat(QUESTION, model="bold", max_tokens=400, ignore_eos=True)
    assert not [r for r in caplog.records if "retry" in r.getMessage()]  # generation may have started
    assert is_idle_soon(server)
    assert server.metric("qadapter_requests_total", adapter="bold", status="499") == gone_before + 1  # it hung up


def test_connection_errors_are_retried_for_idempotent_calls_only(
    tmp_path: Path, adapters_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qadapter.client")
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with QAdapterClient(url, max_retries=2, backoff_s=0.01) as nowhere:
        with pytest.raises(ConnectionFailed, match="is it running"):
            nowhere.models()
        assert len([r for r in caplog.records if "retry" in r.getMessage()]) == 2
        caplog.clear()
        with pytest.raises(ConnectionFailed):
            nowhere.adapters.upload(adapters_dir / "bold")
        assert not [r for r in caplog.records if "retry" in r.getMessage()]


def test_upload_a_directory_get_list_replace_delete(
    admin: QAdapterClient, client: QAdapterClient, adapters_dir: Path
) -> None:
    uploaded = admin.adapters.upload(adapters_dir / "bold", name="dir-up")
    assert (uploaded.name, uploaded.version, uploaded.base_model_id) == ("dir-up", 1, BASE)
    assert admin.adapters.get("dir-up") == uploaded
    assert "dir-up" in {a.name for a in admin.adapters.list()}
    # the same weights on another server give the same greedy answer: the upload carried them intact
    assert admin.chat(QUESTION, model="dir-up", **GREEDY).text == client.chat(QUESTION, model="bold", **GREEDY).text

    replaced = admin.adapters.upload(adapters_dir / "wild", name="dir-up", replace=True)
    assert replaced.version == 2 and replaced.alpha == 0.8  # wild's manifest
    assert admin.chat(QUESTION, model="dir-up", **GREEDY).text == client.chat(QUESTION, model="wild", **GREEDY).text

    admin.adapters.delete("dir-up")
    with pytest.raises(NotFound):
        admin.adapters.get("dir-up")
    with pytest.raises(NotFound):
        admin.chat(QUESTION, model="dir-up", **GREEDY)


def test_replace_reads_the_name_from_the_directory(admin: QAdapterClient, adapters_dir: Path) -> None:
    assert admin.adapters.upload(adapters_dir / "zero").name == "zero"  # the manifest's name
    assert admin.adapters.upload(adapters_dir / "zero", replace=True).version == 2
    with pytest.raises(Conflict) as raised:
        admin.adapters.upload(adapters_dir / "zero")
    assert raised.value.code == "adapter_exists"
    admin.adapters.delete("zero")


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_upload_an_archive(admin: QAdapterClient, adapters_dir: Path, tmp_path: Path, kind: str) -> None:
    archive = tmp_path / f"adapter.{kind}"
    files = sorted((adapters_dir / "wild").iterdir())
    if kind == "tar.gz":
        with tarfile.open(archive, "w:gz") as packed:
            for f in files:
                packed.add(f, arcname=f"wild/{f.name}")
    else:
        with zipfile.ZipFile(archive, "w") as packed:
            for f in files:
                packed.write(f, arcname=f"wild/{f.name}")
    name = f"archived-{kind.replace('.', '')}"
    assert admin.adapters.upload(archive, name=name).name == name
    assert name in {m.id for m in admin.models()}
    with pytest.raises(ValueError, match="pass name="):
        admin.adapters.upload(archive, replace=True)  # an archive's name is not read locally
    admin.adapters.delete(name)


def test_a_base_url_with_v1_is_refused() -> None:
    with pytest.raises(ValueError, match="without /v1: http://127.0.0.1:8000$"):
        QAdapterClient("http://127.0.0.1:8000/v1/")


def test_an_upload_over_the_limit_is_payload_too_large(admin: QAdapterClient, tmp_path: Path) -> None:
    big = tmp_path / "big.tar.gz"
    big.write_bytes(b"\0" * (SMALL_UPLOAD_LIMIT + 1))
    with pytest.raises(PayloadTooLarge) as raised:
        admin.adapters.upload(big, name="big")
    assert (raised.value.status, raised.value.code) == (413, "payload_too_large")


def test_local_paths_that_cannot_be_uploaded(admin: QAdapterClient, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        admin.adapters.upload(tmp_path / "missing")
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ValueError, match="neither an adapter directory nor"):
        admin.adapters.upload(tmp_path / "weights.bin")


def test_a_server_fault_is_a_server_error(admin: QAdapterClient, small_store: Path, adapters_dir: Path) -> None:
    away = small_store.with_name(small_store.name + "-away")
    small_store.rename(away)  # the store's disk is gone: the upload cannot even stage
    try:
        with pytest.raises(ServerError) as raised:
            admin.adapters.upload(adapters_dir / "bold", name="lost")
    finally:
        away.rename(small_store)
    assert (raised.value.status, raised.value.code) == (500, "internal_error")
    assert not isinstance(raised.value, Overloaded)


def _hold_the_queue(server: ServerProcess, admin: QAdapterClient) -> tuple[ChunkStream, threading.Thread]:
    """Fill the tiny queue: one long stream decoding (until closed), one request waiting."""
    running = admin.chat(QUESTION, model=BASE, max_tokens=1000, ignore_eos=True, stream=True)
    next(running)
    waiting = threading.Thread(target=admin.complete, args=("Hello",), kwargs={"model": BASE, "max_tokens": 2})
    waiting.start()
    eventually(lambda: server.metric("qadapter_requests_waiting") == 1, timeout_s=30)  # the caller asserts it
    return running, waiting


def test_503_is_retried_after_retry_after(small_admin_server: ServerProcess, admin: QAdapterClient) -> None:
    def refusals() -> float:
        return small_admin_server.metric("qadapter_requests_total", adapter=BASE, status="503")

    before = refusals()
    outcome: dict[str, Any] = {}

    def retry_patiently() -> None:
        with QAdapterClient(small_admin_server.url, api_key=KEY, max_retries=30, backoff_s=0.01) as patient:
            outcome["answer"] = patient.complete("Hi", model=BASE, max_tokens=2, temperature=0)

    running, waiting = _hold_the_queue(small_admin_server, admin)
    try:
        assert small_admin_server.metric("qadapter_requests_waiting") == 1
        with pytest.raises(Overloaded) as raised:  # max_retries=0
            admin.complete("Hi", model=BASE, max_tokens=2)
        assert raised.value.status == 503 and raised.value.retry_after is not None and raised.value.retry_after >= 1
        # A tiny backoff: only the server's Retry-After (>= 1 s) can space the attempts a second apart.
        with QAdapterClient(small_admin_server.url, api_key=KEY, max_retries=2, backoff_s=0.01) as brief:
            started = time.monotonic()
            with pytest.raises(Overloaded):
                brief.complete("Hi", model=BASE, max_tokens=2)
            waited = time.monotonic() - started
        assert refusals() == before + 1 + 3  # the call and its two retries
        assert waited >= 2 * 1.0
        retrying = threading.Thread(target=retry_patiently)
        retrying.start()
        eventually(lambda: refusals() >= before + 5, timeout_s=30)  # the patient client refused; asserted below
    finally:
        running.close()  # the long stream stops, the waiting request runs, the queue frees up
        waiting.join()
    retrying.join()
    assert outcome["answer"].usage.completion_tokens >= 1  # a later retry got in
    assert refusals() >= before + 5


def test_async_client_runs_requests_concurrently(server: ServerProcess, client: QAdapterClient) -> None:
    models = [BASE, "bold", "wild", "zero"]
    expected = [client.chat(QUESTION, model=m, max_tokens=16, temperature=0, ignore_eos=True).text for m in models]
    expected_stream = client.complete("Once upon a time", model="wild", max_tokens=5, temperature=0).text

    async def run() -> dict[str, object]:
        async with AsyncQAdapterClient(server.url, api_key=KEY, max_retries=0) as ours:
            calls = asyncio.gather(
                *(ours.chat(QUESTION, model=m, max_tokens=16, temperature=0, ignore_eos=True) for m in models)
            )
            peak = 0.0
            while not calls.done():
                peak = max(peak, await asyncio.to_thread(server.metric, "qadapter_requests_running"))
                await asyncio.sleep(0.05)
            stream = await ours.complete("Once upon a time", model="wild", max_tokens=5, temperature=0, stream=True)
            return {
                "answers": [c.text for c in await calls],
                "peak": peak,
                "streamed": "".join([chunk.text async for chunk in stream]),
                "models": {m.id for m in await ours.models()},
            }

    got = asyncio.run(run())
    assert got["answers"] == expected  # each answer as if it ran alone
    assert got["peak"] >= 2  # they decoded together
    assert got["streamed"] == expected_stream
    assert got["models"] == set(models)


def test_async_admin_calls(small_admin_server: ServerProcess, adapters_dir: Path) -> None:
    async def run() -> None:
        async with AsyncQAdapterClient(small_admin_server.url, api_key=KEY, admin_key=ADMIN_KEY) as ours:
            assert (await ours.adapters.upload(adapters_dir / "bold", name="async-up")).version == 1
            assert (await ours.adapters.get("async-up")).name == "async-up"
            assert "async-up" in {a.name for a in await ours.adapters.list()}
            with pytest.raises(Conflict):
                await ours.adapters.upload(adapters_dir / "bold", name="async-up")
            await ours.adapters.delete("async-up")
            with pytest.raises(NotFound):
                await ours.adapters.get("async-up")

    asyncio.run(run())


def test_a_copy_of_an_adapter_directory_with_extra_files_uploads(
    admin: QAdapterClient, adapters_dir: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "with-report"
    shutil.copytree(adapters_dir / "zero", copy)
    (copy / "eval.json").write_text("{}")  # trainers leave reports next to the weights
    (copy / ".DS_Store").write_bytes(b"\0")  # hidden files stay home
    assert admin.adapters.upload(copy, name="with-report").size_bytes > 0
    admin.adapters.delete("with-report")


def test_stream_errors_in_band_are_typed() -> None:
    """A stream that started (HTTP 200) and then failed: its error event raises the typed exception."""
    with pytest.raises(Overloaded):
        sse.decode(
            'data: {"error": {"message": "shutting down", "type": "server_error", "param": null, "code": "overloaded"}}'
        )
    assert sse.decode("data: [DONE]") is None
    assert sse.decode(": keep-alive") == []
