"""The store's start-up install of bundled adapters (the examples): new names copied in, stored names kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qadapter.adapters.format import MANIFEST_FILE, WEIGHTS_FILE, AdapterLimits
from qadapter.adapters.store import AdapterStore
from qadapter.core.base import BaseModelInfo
from qadapter.core.errors import InvalidAdapter
from qadapter.core.knobs import Knobs
from qadapter.testing.synthetic_adapters import random_adapter


def test_install_missing_copies_new_names_and_keeps_stored_ones(tmp_path: Path, tiny_info: BaseModelInfo) -> None:
    source = tmp_path / "examples"
    random_adapter(source / "one", tiny_info, name="one")
    random_adapter(source / "two", tiny_info, name="two")
    (source / "notes").mkdir()  # not an adapter: ignored
    store = AdapterStore(tmp_path / "store", tiny_info, AdapterLimits())
    random_adapter(tmp_path / "upload", tiny_info, name="two", knobs=Knobs(omega=0.5))
    store.install(tmp_path / "upload", None, replace=False)  # the user's own "two"

    assert store.install_missing(source) == ["one"]
    assert {s.name: s.adapter.manifest.omega for s in store.load_all()} == {"one": 0.01, "two": 0.5}
    assert (source / "one" / MANIFEST_FILE).is_file()  # copied, not moved
    assert store.install_missing(source) == []  # idempotent across restarts


def test_bundled_adapters_of_another_base_are_skipped_and_broken_ones_stop_the_install(
    tmp_path: Path, tiny_info: BaseModelInfo
) -> None:
    source = tmp_path / "examples"
    random_adapter(source / "other", tiny_info, name="other")
    manifest = json.loads((source / "other" / MANIFEST_FILE).read_text())
    manifest["base_model"]["fingerprint"] = "sha256:other"
    (source / "other" / MANIFEST_FILE).write_text(json.dumps(manifest))
    store = AdapterStore(tmp_path / "store", tiny_info, AdapterLimits())
    assert store.install_missing(source) == []

    random_adapter(source / "broken", tiny_info, name="broken")
    (source / "broken" / WEIGHTS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(InvalidAdapter, match="broken"):
        store.install_missing(source)
    assert list((tmp_path / "store").iterdir()) == []
    with pytest.raises(InvalidAdapter, match="not a directory"):
        store.install_missing(tmp_path / "missing")
