"""Cluster mode on a real local Ray: `qadapter serve --replicas 2`, two engine replicas on Ray Serve behind
the same FastAPI app, one shared adapter store on disk. Compared with the single-process `server`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from qadapter.adapters.format import CONFIG_FILE, MANIFEST_FILE, WEIGHTS_FILE
from qadapter.core.model import LoadedModel
from qadapter.testing.server_process import ServerProcess
from qadapter.testing.synthetic_adapters import random_adapter
from tests.e2e.conftest import ADMIN_KEY, KEY, eventually

BASE = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
AUTH = {"Authorization": f"Bearer {KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def cluster(adapters_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    store = tmp_path_factory.mktemp("cluster") / "store"
    shutil.copytree(adapters_dir, store)
    flags = ("--replicas", "2", "--api-keys", KEY, "--admin-key", ADMIN_KEY)
    process = ServerProcess(store, tmp_path_factory.mktemp("cluster-logs") / "server.log", *flags)
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, embedded: LoadedModel) -> Path:
    """Adapters to upload: four for affinity, two different policies for one name's versions."""
    root = tmp_path_factory.mktemp("cluster-sources")
    for seed, name in enumerate(["aff-0", "aff-1", "aff-2", "aff-3", "first", "second"], start=20):
        random_adapter(root / name, embedded.info, name=name, b_std=0.5, seed=seed)
    return root


def chat(url: str, model: str, max_tokens: int = 12, **extra: object) -> httpx.Response:
    body = {"model": model, "messages": QUESTION, "max_tokens": max_tokens, "temperature": 0, **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=120)


def answer(url: str, model: str) -> str:
    response = chat(url, model)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def upload(cluster: ServerProcess, source: Path, name: str, method: str = "POST", path: str = "") -> httpx.Response:
    files = [("files", (f, (source / f).read_bytes())) for f in (CONFIG_FILE, WEIGHTS_FILE, MANIFEST_FILE)]
    return httpx.request(
        method, f"{cluster.url}/admin/adapters{path}", files=files, data={"name": name}, headers=ADMIN, timeout=120
    )


def replicas(cluster: ServerProcess) -> dict[str, int]:
    """Every replica reporting, and the pid of its process."""
    found = {}
    for family in text_string_to_metric_families(httpx.get(f"{cluster.url}/metrics", timeout=5).text):
        for sample in family.samples:
            if sample.name == "qadapter_replica_info":
                found[sample.labels["replica"]] = int(sample.labels["process"].rsplit(":", 1)[1])
    return found


def test_a_name_deleted_and_uploaded_again_serves_its_new_weights(cluster: ServerProcess, sources: Path) -> None:
    """Version numbers start over after a delete: the replica that held the old weights must not serve them."""
    assert upload(cluster, sources / "second", "reference").status_code == 201
    assert upload(cluster, sources / "first", "again").status_code == 201
    old = answer(cluster.url, "again")  # now resident on a replica, as version 1
    assert httpx.delete(f"{cluster.url}/admin/adapters/again", headers=ADMIN).status_code == 200
    assert upload(cluster, sources / "second", "again").status_code == 201  # version 1 again, other weights
    new = {answer(cluster.url, "again") for _ in range(4)}
    assert new == {answer(cluster.url, "reference")} and new != {old}


def test_a_client_that_leaves_stops_its_request_on_the_replica(cluster: ServerProcess) -> None:
    body = {"model": "bold", "messages": QUESTION, "max_tokens": 2000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{cluster.url}/v1/chat/completions", json=body, headers=AUTH, timeout=60) as r:
        lines = (line for line in r.iter_lines() if line.startswith("data: {"))
        next(lines), next(lines), next(lines)
        assert eventually(lambda: cluster.metric("qadapter_requests_running") == 1, timeout_s=5)
    # 2000 tokens take minutes here: a request still running after the client left would show
    assert eventually(lambda: cluster.metric("qadapter_requests_running") == 0, timeout_s=10)


def resident(cluster: ServerProcess) -> dict[str, set[str]]:
    """Each adapter resident on some replica, and the replicas that hold it."""
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(httpx.get(f"{cluster.url}/metrics", timeout=5).text):
        for sample in family.samples:
            if sample.name == "qadapter_adapter_resident_info" and sample.value:
                found.setdefault(sample.labels["adapter"], set()).add(sample.labels["replica"])
    return found


def test_greedy_outputs_equal_the_single_process_server(cluster: ServerProcess, server: ServerProcess) -> None:
    for model in (BASE, "bold", "wild"):
        assert answer(cluster.url, model) == answer(server.url, model), model


def test_the_openai_client_streams_through_the_cluster(cluster: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key=KEY, max_retries=0)
    assert {m.id for m in client.models.list().data} >= {BASE, "bold", "wild", "zero"}
    chunks = client.chat.completions.create(model="bold", messages=QUESTION, max_tokens=12, temperature=0, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == answer(cluster.url, "bold")


def test_each_adapter_is_loaded_on_one_replica(cluster: ServerProcess, sources: Path) -> None:
    names = [f"aff-{i}" for i in range(4)]
    for name in names:
        assert upload(cluster, sources / name, name).status_code == 201
    loads_before = cluster.metric("qadapter_adapter_loads_total")
    served_by: dict[str, set[str]] = {name: set() for name in names}
    for _ in range(3):
        for name in names:
            response = chat(cluster.url, name, max_tokens=2)
            assert response.status_code == 200, response.text
            served_by[name].add(response.headers["x-qadapter-replica"])
    assert all(len(replicas_of) == 1 for replicas_of in served_by.values()), served_by
    assert eventually(lambda: cluster.metric("qadapter_adapter_loads_total") - loads_before >= 4, timeout_s=10)
    assert cluster.metric("qadapter_adapter_loads_total") - loads_before == 4  # one load per adapter, on one replica
    holders = resident(cluster)
    assert all(holders[name] == served_by[name] for name in names), holders


def test_upload_replace_and_delete_are_seen_by_the_next_request(
    cluster: ServerProcess, server: ServerProcess, sources: Path
) -> None:
    assert upload(cluster, sources / "first", "swap").status_code == 201
    first = answer(cluster.url, "swap")  # the very next request, whichever replica takes it
    assert upload(cluster, sources / "second", "swap", method="PUT", path="/swap").status_code == 200
    models = httpx.get(f"{cluster.url}/admin/adapters", headers=ADMIN).json()["data"]
    assert next(m for m in models if m["name"] == "swap")["version"] == 2
    replaced = {answer(cluster.url, "swap") for _ in range(4)}
    assert len(replaced) == 1 and replaced != {first}  # version 2 on every request
    assert httpx.delete(f"{cluster.url}/admin/adapters/swap", headers=ADMIN).status_code == 200
    for _ in range(4):
        response = chat(cluster.url, "swap")
        assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    listed = httpx.get(f"{cluster.url}/v1/models", headers=AUTH).json()["data"]
    assert "swap" not in {m["id"] for m in listed}
    # the replicas let the deleted versions go (housekeeping runs each second)
    assert eventually(lambda: "swap" not in resident(cluster), timeout_s=10)


BAD_REQUESTS: list[bytes] = [
    json.dumps({"model": "nope", "messages": QUESTION}).encode(),
    json.dumps({"model": "bold", "messages": QUESTION, "temperature": 5}).encode(),
    json.dumps({"model": "bold", "messages": QUESTION, "max_tokens": 9000}).encode(),
    json.dumps({"model": "bold", "messages": QUESTION, "alpha": 0}).encode(),
    json.dumps({"model": "bold", "messages": "hi"}).encode(),
    json.dumps({"model": "bold", "messages": [{"role": "wizard", "content": "x"}]}).encode(),
    json.dumps({"model": BASE, "messages": [{"role": "user", "content": "x " * 9000}]}).encode(),
    b"{not json",
]


@pytest.mark.parametrize("content", BAD_REQUESTS, ids=range(len(BAD_REQUESTS)))
def test_bad_inputs_get_the_single_process_errors(
    cluster: ServerProcess, server: ServerProcess, content: bytes
) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    ours, theirs = (
        httpx.post(f"{s.url}/v1/chat/completions", content=content, headers=headers, timeout=60)
        for s in (cluster, server)
    )
    assert ours.status_code == theirs.status_code >= 400
    assert ours.json() == theirs.json()


def test_a_killed_replica_fails_only_its_own_streams(cluster: ServerProcess) -> None:
    """kill -9 one replica while six streams run on both: its streams end with an error event and [DONE],
    the others finish, the next requests succeed, and Ray starts a replacement."""
    before = replicas(cluster)
    assert len(before) == 2
    streams: list[dict[str, object]] = []
    opened = threading.Semaphore(0)  # each stream releases once its first event came

    def run(model: str) -> None:
        record: dict[str, object] = {"model": model, "events": []}
        streams.append(record)
        body = {"model": model, "messages": QUESTION, "max_tokens": 300, "ignore_eos": True, "stream": True}
        try:
            with httpx.stream("POST", f"{cluster.url}/v1/chat/completions", json=body, headers=AUTH, timeout=120) as r:
                record["replica"] = r.headers.get("x-qadapter-replica")
                lines = (line for line in r.iter_lines() if line.startswith("data: "))
                record["events"].append(next(lines))
                opened.release()
                record["events"].extend(lines)
        except BaseException:
            opened.release()  # the main thread must not wait for a stream that failed to open
            raise

    threads = [threading.Thread(target=run, args=(m,)) for m in ("bold", "wild", "zero", BASE, BASE, BASE)]
    for thread in threads:
        thread.start()
    for _ in threads:
        assert opened.acquire(timeout=120), "a stream did not start"
    assert {s["replica"] for s in streams} == set(before), "the streams should run on both replicas"
    victim = streams[0]["replica"]
    os.kill(before[victim], signal.SIGKILL)
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive(), "a stream hung after its replica was killed"

    for record in streams:
        events = record["events"]
        assert events[-1] == "data: [DONE]", record
        payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
        if record["replica"] == victim:
            assert payloads[-1]["error"]["code"] == "replica_failed", record
        else:
            assert all("error" not in p for p in payloads), record
            assert payloads[-1]["choices"][0]["finish_reason"] == "length"

    for model in ("bold", BASE, "wild", BASE):  # the living replica takes new requests at once
        assert chat(cluster.url, model, max_tokens=2).status_code == 200
    restarted = eventually(lambda: len(replicas(cluster)) == 2 and victim not in replicas(cluster), timeout_s=240)
    assert restarted, replicas(cluster)
    assert answer(cluster.url, "bold")  # nothing in the store was lost
