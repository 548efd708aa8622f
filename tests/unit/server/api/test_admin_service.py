"""server/api/admin_service.py between a real AdapterStore (in tmp_path) and a real Engine on the tiny
model: an upload (files or archive) is stored and published, then described; a replace publishes
the next version and drops the old one; a delete unpublishes and removes; whatever is refused, by
the upload's shape, the store or the engine, leaves nothing on disk and nothing published."""

from __future__ import annotations

import asyncio
import io
import tarfile
import zipfile
from pathlib import Path

import pytest
from fastapi import UploadFile

from qadapter.adapters.format import AdapterLimits
from qadapter.adapters.store import AdapterStore
from qadapter.adapters.store_lock import STAGING_PREFIX
from qadapter.core.base import BaseModelInfo
from qadapter.core.errors import AdapterExists, AdapterNotFound, InvalidAdapter
from qadapter.core.knobs import Knobs
from qadapter.server.api.admin_service import AdapterAdmin
from qadapter.server.engine.engine import Engine
from qadapter.server.engine.registry import LoadAdapter
from qadapter.testing.synthetic_adapters import random_adapter
from tests.conftest import tiny_model

MAX_UPLOAD_BYTES = 2**20


@pytest.fixture
def engine(tiny_engine: Engine) -> Engine:
    return tiny_engine


@pytest.fixture
def store(tmp_path: Path) -> AdapterStore:
    return AdapterStore(tmp_path / "store", base_info(), AdapterLimits())


@pytest.fixture
def admin(store: AdapterStore, engine: Engine) -> AdapterAdmin:
    return AdapterAdmin(store, engine, MAX_UPLOAD_BYTES)


def base_info(**overrides: object) -> BaseModelInfo:
    return BaseModelInfo.from_model(tiny_model(**overrides), "tiny-llama")


def source(tmp_path: Path, name: str, seed: int = 0, info: BaseModelInfo | None = None) -> Path:
    path = tmp_path / "sources" / f"{name}-{seed}"
    random_adapter(path, info or base_info(), name=name, knobs=Knobs(alpha=0.5, omega=2.0), seed=seed)
    return path


def files_of(directory: Path) -> list[UploadFile]:
    return [UploadFile(io.BytesIO(p.read_bytes()), filename=p.name) for p in sorted(directory.iterdir())]


def archive_of(directory: Path, kind: str) -> UploadFile:
    packed = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(packed, "w") as zipped:
            for path in directory.iterdir():
                zipped.write(path, f"{directory.name}/{path.name}")
    else:
        with tarfile.open(fileobj=packed, mode="w:gz") as tarred:
            tarred.add(directory, arcname=directory.name)
    packed.seek(0)
    return UploadFile(packed, filename=f"adapter.{kind}")


def on_disk(store: AdapterStore) -> list[str]:
    """The store's adapter directories and staging leftovers (not its lock file or quarantine folder)."""
    return sorted(p.name for p in store.root.iterdir() if p.name.startswith(STAGING_PREFIX) or p.name[0] != ".")


def settled(described: dict[str, object]) -> dict[str, object]:
    """A description without `resident`: the engine warms a new version in the background."""
    return {key: value for key, value in described.items() if key != "resident"}


def upload(
    admin: AdapterAdmin, files: list[UploadFile], archive: UploadFile | None = None, **options: object
) -> dict[str, object]:
    name, replace = options.get("name"), bool(options.get("replace", False))
    return asyncio.run(admin.upload(files, archive, name, replace))  # type: ignore[arg-type]


def test_an_upload_of_files_is_stored_published_and_described(
    tmp_path: Path, admin: AdapterAdmin, store: AdapterStore, engine: Engine
) -> None:
    described = upload(admin, files_of(source(tmp_path, "calm")))
    assert described["name"] == "calm" and described["version"] == 1
    assert (described["alpha"], described["omega"]) == (0.5, 2.0)
    assert described["base_model"] == {"id": "tiny-llama", "fingerprint": base_info().fingerprint}
    assert isinstance(described["size_bytes"], int) and described["size_bytes"] > 0
    assert described["running_requests"] == 0 and isinstance(described["resident"], bool)
    assert on_disk(store) == ["calm@1"]  # nothing staged is left behind
    assert engine.adapters.names() == ["calm"]
    assert settled(admin.get("calm")) == settled(described)
    listing = admin.list()
    assert [settled(a) for a in listing["data"]] == [settled(described)] and listing["broken"] == []


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_an_archive_upload_is_unpacked_and_may_be_renamed(
    tmp_path: Path, admin: AdapterAdmin, store: AdapterStore, kind: str
) -> None:
    described = upload(admin, [], archive_of(source(tmp_path, "calm"), kind), name="renamed")
    assert described["name"] == "renamed" and described["version"] == 1
    assert on_disk(store) == ["renamed@1"] and admin.get("renamed")["name"] == "renamed"


def test_an_existing_name_is_a_409_that_leaves_the_store_and_the_served_version_alone(
    tmp_path: Path, admin: AdapterAdmin, store: AdapterStore
) -> None:
    first = upload(admin, files_of(source(tmp_path, "calm")))
    with pytest.raises(AdapterExists) as caught:
        upload(admin, files_of(source(tmp_path, "calm", seed=1)))
    assert caught.value.param == "name"
    assert on_disk(store) == ["calm@1"]
    assert settled(admin.get("calm")) == settled(first)


def test_a_replace_publishes_the_next_version_and_removes_the_old_one(
    tmp_path: Path, admin: AdapterAdmin, store: AdapterStore
) -> None:
    upload(admin, files_of(source(tmp_path, "calm")))
    described = upload(admin, files_of(source(tmp_path, "calm", seed=1)), name="calm", replace=True)
    assert described["version"] == 2 and admin.get("calm")["version"] == 2
    assert on_disk(store) == ["calm@2"]
    assert [a["version"] for a in admin.list()["data"]] == [2]


def test_replacing_a_name_that_is_not_stored_is_a_404_that_leaves_nothing(
    tmp_path: Path, admin: AdapterAdmin, store: AdapterStore
) -> None:
    with pytest.raises(AdapterNotFound) as caught:
        upload(admin, files_of(source(tmp_path, "calm")), name="calm", replace=True)
    assert caught.value.param == "name" and on_disk(store) == [] and admin.list()["data"] == []


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ("neither", "send either the adapter's files"),
        ("both", "send either the adapter's files"),
        ("path", "must be a plain file name"),
        ("hidden", "must be a plain file name"),
        ("not-an-archive", "not a readable .tar.gz or .zip archive"),
        ("missing-file", None),
    ],
)
def test_a_malformed_upload_is_refused_and_leaves_nothing_behind(
    tmp_path: Path, admin: AdapterAdmin, store: AdapterStore, shape: str, message: str | None
) -> None:
    directory = source(tmp_path, "calm")
    files, archive = files_of(directory), None
    if shape == "both":
        archive = archive_of(directory, "zip")
    elif shape == "neither":
        files = []
    elif shape in ("path", "hidden"):
        files[0].filename = "../escape.json" if shape == "path" else ".hidden"
    elif shape == "not-an-archive":
        files, archive = [], UploadFile(io.BytesIO(b"plain text, not packed"), filename="adapter.zip")
    else:
        files = files[1:]
    with pytest.raises(InvalidAdapter, match=message):
        upload(admin, files, archive)
    assert on_disk(store) == [] and admin.list()["data"] == []


def test_an_adapter_made_for_another_base_is_refused_and_leaves_nothing(
    tmp_path: Path, admin: AdapterAdmin, store: AdapterStore
) -> None:
    foreign = source(tmp_path, "foreign", info=base_info(intermediate_size=96))  # another fingerprint
    with pytest.raises(InvalidAdapter):
        upload(admin, files_of(foreign))
    assert on_disk(store) == [] and admin.list()["data"] == []


def test_an_install_the_engine_refuses_is_removed_from_the_store_again(
    tmp_path: Path, admin: AdapterAdmin, store: AdapterStore, engine: Engine
) -> None:
    served = random_adapter(tmp_path / "served" / "calm", base_info(), name="calm")
    engine.adapters.apply(LoadAdapter(served, version=5)).result(timeout=30)  # published past the store
    with pytest.raises(InvalidAdapter, match="not newer than the served version 5"):
        upload(admin, files_of(source(tmp_path, "calm", seed=1)))
    assert on_disk(store) == [] and admin.get("calm")["version"] == 5


def test_racing_uploads_of_one_name_publish_one_and_refuse_the_other(
    tmp_path: Path, admin: AdapterAdmin, store: AdapterStore
) -> None:
    async def both() -> list[object]:
        uploads = [admin.upload(files_of(source(tmp_path, "calm", seed=s)), None, None, False) for s in (1, 2)]
        return await asyncio.gather(*uploads, return_exceptions=True)

    results = asyncio.run(both())
    assert sorted(type(r).__name__ for r in results) == ["AdapterExists", "dict"]
    assert on_disk(store) == ["calm@1"] and admin.get("calm")["version"] == 1


def test_a_delete_unpublishes_and_removes_every_version(
    tmp_path: Path, admin: AdapterAdmin, store: AdapterStore, engine: Engine
) -> None:
    upload(admin, files_of(source(tmp_path, "calm")))
    upload(admin, files_of(source(tmp_path, "loud")))
    asyncio.run(admin.delete("calm"))
    assert on_disk(store) == ["loud@1"] and engine.adapters.names() == ["loud"]
    with pytest.raises(AdapterNotFound) as caught:
        admin.get("calm")
    assert caught.value.param == "name"
    assert [a["name"] for a in admin.list()["data"]] == ["loud"]
    assert upload(admin, files_of(source(tmp_path, "calm", seed=3)))["version"] == 1  # the name is free again


def test_getting_an_unknown_adapter_is_a_404_naming_name(admin: AdapterAdmin) -> None:
    with pytest.raises(AdapterNotFound, match="'ghost' does not exist") as caught:
        admin.get("ghost")
    assert caught.value.param == "name"


def test_deleting_an_unknown_adapter_is_a_404_that_touches_nothing(
    tmp_path: Path, admin: AdapterAdmin, store: AdapterStore
) -> None:
    upload(admin, files_of(source(tmp_path, "calm")))
    with pytest.raises(AdapterNotFound):
        asyncio.run(admin.delete("ghost"))
    assert on_disk(store) == ["calm@1"] and admin.get("calm")["version"] == 1


def test_deleting_an_unknown_adapter_names_the_name_parameter(admin: AdapterAdmin) -> None:
    with pytest.raises(AdapterNotFound) as caught:
        asyncio.run(admin.delete("ghost"))
    assert caught.value.param == "name"


def test_the_listing_shows_what_the_store_quarantined(tmp_path: Path, engine: Engine) -> None:
    root = tmp_path / "store"
    (root / "broken@1").mkdir(parents=True)
    (root / "broken@1" / "qadapter.json").write_text("{not json")
    store = AdapterStore(root, base_info(), AdapterLimits())
    assert store.load_all() == []
    listing = AdapterAdmin(store, engine, MAX_UPLOAD_BYTES).list()
    assert listing["data"] == [] and [b["stored_as"] for b in listing["broken"]] == ["broken@1"]
    assert all(isinstance(b["reason"], str) and b["reason"] for b in listing["broken"])
