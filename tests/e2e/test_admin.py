"""/admin/adapters on a real server: upload, replace, delete, validation, auth, persistence."""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import socket
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
import torch
from safetensors.torch import load_file, save_file

from qadapter.adapters.format import CONFIG_FILE, MANIFEST_FILE, WEIGHTS_FILE
from qadapter.core.model import LoadedModel
from qadapter.testing.server_process import ServerProcess
from qadapter.testing.synthetic_adapters import random_adapter
from tests.e2e.conftest import KEY, eventually

ADMIN = "admin-key"
LIMIT = 4 * 2**20
FILES = (CONFIG_FILE, WEIGHTS_FILE, MANIFEST_FILE)
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def admin_server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    flags = ("--api-keys", KEY, "--admin-key", ADMIN, "--max-upload-bytes", str(LIMIT))
    process = ServerProcess(store, tmp_path_factory.mktemp("admin-logs") / "server.log", *flags)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, embedded: LoadedModel) -> dict[str, Path]:
    """Adapter directories to upload: two clearly different policies and variations."""
    root = tmp_path_factory.mktemp("sources")
    return {
        "first": random_adapter(root / "first", embedded.info, name="swap", b_std=0.5, seed=11).path,
        "second": random_adapter(root / "second", embedded.info, name="swap", b_std=0.5, seed=12).path,
        "other": random_adapter(root / "other", embedded.info, name="other", b_std=0.5, seed=13).path,
    }


def admin_headers(key: str = ADMIN) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def upload(
    server: ServerProcess, source: Path, name: str | None = None, method: str = "POST", path: str = ""
) -> httpx.Response:
    files = [("files", (f, (source / f).read_bytes())) for f in FILES]
    data = {"name": name} if name else {}
    return httpx.request(
        method, f"{server.url}/admin/adapters{path}", files=files, data=data, headers=admin_headers(), timeout=120
    )


def upload_archive(server: ServerProcess, archive: bytes, filename: str, name: str | None = None) -> httpx.Response:
    data = {"name": name} if name else {}
    return httpx.post(
        f"{server.url}/admin/adapters",
        files={"archive": (filename, archive)},
        data=data,
        headers=admin_headers(),
        timeout=120,
    )


def tar_of(source: Path, top: str = "adapter") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for f in FILES:
            tar.add(source / f, arcname=f"{top}/{f}")
    return buffer.getvalue()


def served(server: ServerProcess) -> set[str]:
    models = httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"]
    return {m["id"] for m in models}


def greedy_answer(server: ServerProcess, model: str, max_tokens: int = 12) -> str:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    response = client.chat.completions.create(
        model=model, messages=QUESTION, max_tokens=max_tokens, temperature=0, extra_body={"ignore_eos": True}
    )
    return response.choices[0].message.content


@contextmanager
def running_stream(server: ServerProcess, model: str) -> Iterator[Iterator[str]]:
    """A 30-token stream on `model`, already decoding; yields its remaining lines."""
    body = {"model": model, "messages": QUESTION, "max_tokens": 30, "stream": True, "ignore_eos": True}
    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
    ) as response:
        lines = response.iter_lines()  # kept: a dropped line iterator closes the response
        next(lines)
        yield lines


def delete(server: ServerProcess, name: str) -> httpx.Response:
    return httpx.delete(f"{server.url}/admin/adapters/{name}", headers=admin_headers(), timeout=60)


def test_upload_files_then_chat_with_the_openai_client(admin_server: ServerProcess, sources: dict[str, Path]) -> None:
    resident_before = admin_server.metric("qadapter_adapters_resident")
    response = upload(admin_server, sources["other"], name="files-up")
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "files-up" and response.json()["version"] == 1
    assert "files-up" in served(admin_server)
    assert greedy_answer(admin_server, "files-up")
    assert admin_server.metric("qadapter_adapters_resident") == resident_before + 1
    pool_bytes = admin_server.metric("qadapter_adapter_bytes")
    assert pool_bytes > 0
    assert delete(admin_server, "files-up").status_code == 200
    assert admin_server.metric("qadapter_adapters_resident") == resident_before  # its slot was freed
    assert upload(admin_server, sources["other"], name="files-up-again").status_code == 201
    assert greedy_answer(admin_server, "files-up-again")
    assert admin_server.metric("qadapter_adapter_bytes") == pool_bytes  # into the freed slot: the pool did not grow
    assert delete(admin_server, "files-up-again").status_code == 200


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_upload_an_archive(admin_server: ServerProcess, sources: dict[str, Path], kind: str) -> None:
    if kind == "tar.gz":
        archive = tar_of(sources["other"])
    else:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zipped:
            for f in FILES:
                zipped.write(sources["other"] / f, arcname=f"adapter/{f}")
        archive = buffer.getvalue()
    response = upload_archive(admin_server, archive, f"adapter.{kind}", name=f"archived-{kind.replace('.', '')}")
    assert response.status_code == 201, response.text
    assert f"archived-{kind.replace('.', '')}" in served(admin_server)


def test_an_existing_name_is_409_and_an_unknown_delete_404(
    admin_server: ServerProcess, sources: dict[str, Path]
) -> None:
    assert upload(admin_server, sources["other"], name="twice").status_code == 201
    again = upload(admin_server, sources["other"], name="twice")
    assert again.status_code == 409 and again.json()["error"]["code"] == "adapter_exists"
    missing = delete(admin_server, "never-was")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_racing_uploads_of_one_name_have_one_winner(admin_server: ServerProcess, sources: dict[str, Path]) -> None:
    statuses: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: statuses.append(upload(admin_server, sources["other"], name="race").status_code)
        )
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [201, 409, 409, 409]


def test_replace_while_streams_run_keeps_each_stream_on_its_version(
    admin_server: ServerProcess, sources: dict[str, Path]
) -> None:
    assert upload(admin_server, sources["first"]).status_code == 201
    v1 = greedy_answer(admin_server, "swap", max_tokens=40)
    texts: list[str] = []

    def stream() -> None:
        client = openai.OpenAI(base_url=f"{admin_server.url}/v1", api_key=KEY, max_retries=0)
        chunks = client.chat.completions.create(
            model="swap", messages=QUESTION, max_tokens=40, temperature=0, stream=True, extra_body={"ignore_eos": True}
        )
        texts.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))

    threads = [threading.Thread(target=stream) for _ in range(8)]
    for thread in threads:
        thread.start()
    eventually(lambda: admin_server.metric("qadapter_requests_running") >= 8, timeout_s=30)
    assert admin_server.metric("qadapter_requests_running") == 8  # all 8 are mid-stream during the swap
    replaced = upload(admin_server, sources["second"], method="PUT", path="/swap")
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["version"] == 2
    models = httpx.get(f"{admin_server.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"]
    assert next(m for m in models if m["id"] == "swap")["version"] == 2  # listed right after the 200
    v2 = greedy_answer(admin_server, "swap", max_tokens=40)  # new requests get the new version at once
    for thread in threads:
        thread.join()
    assert len(texts) == 8 and all(text == v1 for text in texts)  # no failure, no mixed versions
    assert v2 != v1


def test_delete_during_use_lets_the_stream_finish(admin_server: ServerProcess, sources: dict[str, Path]) -> None:
    assert upload(admin_server, sources["other"], name="doomed").status_code == 201
    with running_stream(admin_server, "doomed") as lines:
        assert delete(admin_server, "doomed").status_code == 200
        assert "doomed" not in served(admin_server)
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    finals = [json.loads(line[6:]) for line in rest if line.startswith("data: {")]
    assert [c["choices"][0]["finish_reason"] for c in finals if c["choices"][0]["finish_reason"]] == ["length"]
    with pytest.raises(openai.NotFoundError):
        greedy_answer(admin_server, "doomed")


def _pickle_bomb(sentinel: Path) -> bytes:
    class Bomb:
        def __reduce__(self) -> tuple:
            return (open, (str(sentinel), "w"))

    return pickle.dumps(Bomb())


def _tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.addfile(member, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def _edited(
    source: Path,
    tmp: Path,
    config: dict | None = None,
    manifest: dict | None = None,
    weights: dict[str, torch.Tensor] | None = None,
    truncate: bool = False,
) -> Path:
    target = tmp / "edited"
    target.mkdir()
    for f in FILES:
        (target / f).write_bytes((source / f).read_bytes())
    for name, changes in ((CONFIG_FILE, config), (MANIFEST_FILE, manifest)):
        if changes:
            (target / name).write_text(json.dumps({**json.loads((target / name).read_text()), **changes}))
    if weights is not None:
        save_file(weights, target / WEIGHTS_FILE)
    if truncate:
        data = (target / WEIGHTS_FILE).read_bytes()
        (target / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    return target


REJECTIONS = {
    "bad manifest": (400, "does not match the manifest schema"),
    "base mismatch": (400, "was trained for base model 'elsewhere'"),
    "rank too high": (400, "above this server's maximum of 64"),
    "wrong shapes": (400, "do not fit the base layer"),
    "truncated safetensors": (400, "corrupt or truncated"),
    "lora_alpha NaN": (400, "NaN is not a JSON number"),
    "lora_alpha Infinity": (400, "Infinity is not a JSON number"),
    "absurd lora_alpha": (400, "lora_alpha must be a number in (0, 4096]"),
    "huge description": (400, "description: String should have at most 4096 characters"),
    "deep manifest": (400, "nested too deeply"),
    "huge weights": (400, "above this server's limit of 100"),
    "NaN weights": (400, "must hold finite floating-point values"),
    "target_modules no regex": (400, "is not a valid regular expression"),
    "rank_pattern no regex": (400, "is not a valid regular expression"),
    "alpha_pattern no regex": (400, "is not a valid regular expression"),
}


@pytest.mark.parametrize("case", sorted(REJECTIONS))
def test_invalid_adapters_are_refused_without_a_trace(
    admin_server: ServerProcess, store: Path, sources: dict[str, Path], embedded: LoadedModel, tmp_path: Path, case: str
) -> None:
    source = sources["other"]
    weights = load_file(source / WEIGHTS_FILE)
    key = next(k for k in weights if k.endswith("lora_A.weight"))
    edits = {
        "bad manifest": {"manifest": {"alpha": -1}},
        "base mismatch": {"manifest": {"base_model": {"id": "elsewhere", "fingerprint": "sha256:00"}}},
        "rank too high": {"config": {"r": 128}},
        "wrong shapes": {"weights": {**weights, key: torch.zeros(8, 7)}},
        "truncated safetensors": {"truncate": True},
        "lora_alpha NaN": {"config": {"lora_alpha": float("nan")}},
        "lora_alpha Infinity": {"config": {"lora_alpha": float("inf")}},
        "absurd lora_alpha": {"config": {"lora_alpha": 1e12}},
        "huge description": {"manifest": {"description": "x" * 100_000}},
        "deep manifest": {"manifest": {"training": json.loads("[" * 900 + "]" * 900)}},
        "huge weights": {"weights": {**weights, key: torch.full_like(weights[key], 1e30)}},
        "NaN weights": {"weights": {**weights, key: torch.full_like(weights[key], float("nan"))}},
        "target_modules no regex": {"config": {"target_modules": "q_proj("}},
        "rank_pattern no regex": {"config": {"rank_pattern": {"[v_proj": 4}}},
        "alpha_pattern no regex": {"config": {"alpha_pattern": {"(?P<": 8}}},
    }[case]
    before_store, before_models = sorted(p.name for p in store.iterdir()), served(admin_server)
    response = upload(admin_server, _edited(source, tmp_path, **edits), name="refused")
    status, fragment = REJECTIONS[case]
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]["message"]
    assert sorted(p.name for p in store.iterdir()) == before_store
    assert served(admin_server) == before_models


def test_a_pickle_is_refused_and_never_loaded(
    admin_server: ServerProcess, store: Path, tmp_path: Path, sources: dict[str, Path]
) -> None:
    sentinel = tmp_path / "pwned"
    files = [("files", (f, (sources["other"] / f).read_bytes())) for f in FILES]
    files.append(("files", ("adapter_model.bin", _pickle_bomb(sentinel))))
    before = sorted(p.name for p in store.iterdir())
    response = httpx.post(
        f"{admin_server.url}/admin/adapters", files=files, data={"name": "pickled"}, headers=admin_headers()
    )
    assert response.status_code == 400 and "pickle weight files are not accepted" in response.json()["error"]["message"]
    assert not sentinel.exists()
    assert sorted(p.name for p in store.iterdir()) == before


@pytest.mark.parametrize(
    ("member", "fragment"),
    [
        (tarfile.TarInfo("../escape.json"), "points outside the archive"),
        (tarfile.TarInfo("/etc/evil.json"), "has an absolute path"),
    ],
)
def test_unsafe_archive_paths_are_refused(
    admin_server: ServerProcess, store: Path, member: tarfile.TarInfo, fragment: str
) -> None:
    member.size = 2
    before = sorted(p.name for p in store.iterdir())
    response = upload_archive(admin_server, _tar_with(member, b"{}"), "evil.tar.gz", name="evil")
    assert response.status_code == 400 and fragment in response.json()["error"]["message"]
    assert sorted(p.name for p in store.iterdir()) == before


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_links_in_archives_are_refused(admin_server: ServerProcess, store: Path, kind: bytes) -> None:
    link = tarfile.TarInfo("adapter/adapter_model.safetensors")
    link.type, link.linkname = kind, "/etc/passwd"
    before = sorted(p.name for p in store.iterdir())
    response = upload_archive(admin_server, _tar_with(link), "link.tar.gz", name="linked")
    assert response.status_code == 400 and "only regular files are allowed" in response.json()["error"]["message"]
    assert sorted(p.name for p in store.iterdir()) == before


def test_a_chunked_upload_past_the_limit_is_413(admin_server: ServerProcess, store: Path) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the size shows only while reading
        for _ in range(LIMIT // 2**20 + 2):
            yield b"\0" * 2**20

    before = sorted(p.name for p in store.iterdir())
    response = httpx.post(
        f"{admin_server.url}/admin/adapters",
        content=chunks(),
        timeout=60,
        headers={**admin_headers(), "Content-Type": "multipart/form-data; boundary=x"},
    )
    assert response.status_code == 413
    assert sorted(p.name for p in store.iterdir()) == before


def test_the_key_is_checked_before_the_body_is_read(admin_server: ServerProcess) -> None:
    response = httpx.post(f"{admin_server.url}/admin/adapters", files={"archive": ("big", b"\0" * (LIMIT + 1))})
    assert response.status_code == 401  # not 413: nobody unauthenticated gets the server to read a body


def test_replacing_an_unknown_name_is_404(admin_server: ServerProcess, sources: dict[str, Path]) -> None:
    response = upload(admin_server, sources["other"], method="PUT", path="/nobody")
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"


def test_a_name_deleted_while_pinned_can_be_uploaded_again(
    admin_server: ServerProcess, sources: dict[str, Path]
) -> None:
    assert upload(admin_server, sources["other"], name="phoenix").status_code == 201
    with running_stream(admin_server, "phoenix") as lines:
        assert delete(admin_server, "phoenix").status_code == 200
        again = upload(admin_server, sources["first"], name="phoenix")  # the old version is still pinned
        assert again.status_code == 201, again.text
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    assert greedy_answer(admin_server, "phoenix")


def test_an_oversized_upload_is_413(admin_server: ServerProcess, store: Path) -> None:
    before = sorted(p.name for p in store.iterdir())
    response = httpx.post(
        f"{admin_server.url}/admin/adapters",
        files={"archive": ("big.tar.gz", b"\0" * (LIMIT + 1))},
        headers=admin_headers(),
        timeout=60,
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"
    assert sorted(p.name for p in store.iterdir()) == before


@pytest.mark.parametrize(("key", "status"), [(None, 401), (KEY, 403), ("wrong", 401), (ADMIN, 200)])
def test_admin_routes_need_the_admin_key(admin_server: ServerProcess, key: str | None, status: int) -> None:
    headers = admin_headers(key) if key else {}
    for method, path in [("GET", ""), ("GET", "/nothing"), ("DELETE", "/nothing"), ("POST", ""), ("PUT", "/nothing")]:
        response = httpx.request(method, f"{admin_server.url}/admin/adapters{path}", headers=headers)
        if status == 200:
            assert response.status_code != 401 and response.status_code != 403
        else:
            assert response.status_code == status, (method, path)
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_admin_routes_are_off_without_an_admin_key(server: ServerProcess) -> None:
    response = httpx.get(f"{server.url}/admin/adapters", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 403 and "QADAPTER_ADMIN_KEY" in response.json()["error"]["message"]


def test_the_store_survives_a_restart_and_drops_half_uploads(
    store: Path, sources: dict[str, Path], tmp_path: Path, embedded: LoadedModel
) -> None:
    first = ServerProcess(store, tmp_path / "a.log", "--admin-key", ADMIN)
    try:
        assert upload(first, sources["other"], name="kept").status_code == 201
    finally:
        first.kill_hard()
    half = store / f".staging-{socket.gethostname()}-{first.process.pid}-x1"  # the killed server's upload
    (half / "adapter").mkdir(parents=True)
    (half / "adapter" / MANIFEST_FILE).write_text("{")
    second = ServerProcess(store, tmp_path / "b.log", "--admin-key", ADMIN)
    try:
        assert "kept" in served(second)
        assert not half.exists()
    finally:
        second.stop()


def test_cold_adapters_load_on_demand_with_bounded_residency(adapters_dir: Path, tmp_path: Path) -> None:
    small = ServerProcess(adapters_dir, tmp_path / "resident.log", "--api-keys", KEY, "--max-resident-adapters", "1")
    try:
        answers = {model: greedy_answer(small, model) for model in ("bold", "wild", "zero", "bold")}
        assert all(answers.values())
        assert small.metric("qadapter_adapters_resident") == 1
        assert small.metric("qadapter_adapters_loaded") == 3
        assert small.metric("qadapter_adapter_evictions_total") >= 3
        assert small.metric("qadapter_adapter_load_seconds_count") >= 4
    finally:
        small.stop()


@pytest.mark.parametrize(
    ("filename", "message"),
    [
        (b"a" * 300, "must be 1 to 255 bytes long"),
        (b"adapter\x00config.json", "holds control characters"),
        (b"../qadapter.json", "must be a plain file name"),
    ],
)
def test_hostile_upload_file_names_are_400_and_the_connection_lives_on(
    admin_server: ServerProcess, store: Path, sources: dict[str, Path], filename: bytes, message: str
) -> None:
    """The multipart body is written by hand: httpx would percent-encode a NUL in a file name."""
    boundary = b"qadapter-test-boundary"
    parts = [(f.encode(), (sources["other"] / f).read_bytes()) for f in FILES] + [(filename, b"x")]
    body = (
        b"".join(
            b"--"
            + boundary
            + b'\r\nContent-Disposition: form-data; name="files"; filename="'
            + name
            + b'"\r\n\r\n'
            + content
            + b"\r\n"
            for name, content in parts
        )
        + b"--"
        + boundary
        + b"--\r\n"
    )
    headers = {**admin_headers(), "Content-Type": f"multipart/form-data; boundary={boundary.decode()}"}
    before = sorted(p.name for p in store.iterdir())
    with httpx.Client(base_url=admin_server.url, timeout=60) as http:
        response = http.post("/admin/adapters", content=body, headers=headers)
        assert response.status_code == 400, response.text
        assert message in response.json()["error"]["message"]
        assert http.get("/admin/adapters", headers=admin_headers()).status_code == 200  # the same connection serves on
    assert sorted(p.name for p in store.iterdir()) == before


def test_a_manifest_nested_beyond_the_parser_is_400(
    admin_server: ServerProcess, store: Path, sources: dict[str, Path]
) -> None:
    files = [("files", (f, (sources["other"] / f).read_bytes())) for f in (CONFIG_FILE, WEIGHTS_FILE)]
    files.append(("files", (MANIFEST_FILE, b"[" * 100_000 + b"]" * 100_000)))
    before = sorted(p.name for p in store.iterdir())
    response = httpx.post(f"{admin_server.url}/admin/adapters", files=files, headers=admin_headers(), timeout=60)
    assert response.status_code == 400 and MANIFEST_FILE in response.json()["error"]["message"], response.text
    assert sorted(p.name for p in store.iterdir()) == before


def test_an_adapter_may_not_take_the_base_models_id(admin_server: ServerProcess, sources: dict[str, Path]) -> None:
    base_id = "smollm2-135m-instruct"
    response = upload(admin_server, sources["other"], name=base_id)
    assert response.status_code == 400 and response.json()["error"]["param"] == "name", response.text
    assert "the base model's id" in response.json()["error"]["message"]
    models = httpx.get(f"{admin_server.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"]
    assert [m["id"] for m in models].count(base_id) == 1


def test_a_kill_during_replace_and_a_broken_adapter_leave_a_server_that_starts(
    sources: dict[str, Path], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    first = ServerProcess(store, tmp_path / "a.log", "--admin-key", ADMIN)
    replacing = threading.Thread(target=lambda: _quietly(upload, first, sources["second"], None, "PUT", "/swap"))
    try:
        assert upload(first, sources["first"]).status_code == 201  # "swap"
        assert upload(first, sources["other"], name="doomed").status_code == 201
        replacing.start()
        time.sleep(0.05)  # the replace is under way
    finally:
        first.kill_hard()
        replacing.join()
    (next(store.glob("doomed@*")) / WEIGHTS_FILE).write_bytes(b"not safetensors")  # the current version breaks

    second = ServerProcess(store, tmp_path / "b.log", "--api-keys", KEY, "--admin-key", ADMIN)
    try:
        assert served(second) == {"smollm2-135m-instruct", "swap"}
        assert greedy_answer(second, "swap")  # whichever version the kill left, it serves whole
        listing = httpx.get(f"{second.url}/admin/adapters", headers=admin_headers()).json()
        (broken,) = listing["broken"]
        assert broken["stored_as"] == "doomed@1" and "corrupt or truncated" in broken["reason"]
        with pytest.raises(openai.NotFoundError):  # never the base model's output instead
            greedy_answer(second, "doomed")
    finally:
        second.stop()


def _quietly(call: Callable[..., object], *args: object) -> None:
    """Run a request whose server may be killed under it."""
    with contextlib.suppress(httpx.HTTPError):
        call(*args)
