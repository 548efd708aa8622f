"""The persistent adapter store: one directory per adapter version, installed atomically.

Layout under the root: `<name>@<version>/` (a plain `<dir>/` is version 1 of its manifest's name),
plus `.staging-*` directories for uploads in progress. An install is fsynced in its staging
directory and renamed into place, so after a crash an adapter is either complete or absent; the
staging leftovers are removed at start.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from qadapter.adapters.format import (
    MANIFEST_FILE,
    Manifest,
    ValidatedAdapter,
    check_name,
    read_manifest,
    validate,
)
from qadapter.core.base import BaseModelInfo
from qadapter.core.errors import AdapterExists, AdapterNotFound, InvalidAdapter

log = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"
_VERSIONED = re.compile(r"(?P<name>.+)@(?P<version>\d+)")


@dataclass(frozen=True)
class StoredAdapter:
    adapter: ValidatedAdapter
    version: int

    @property
    def name(self) -> str:
        return self.adapter.name


class AdapterStore:
    """Thread-safe: installs and deletes of one name are serialised; one of racing uploads wins."""

    def __init__(self, root: Path, base: BaseModelInfo, max_rank: int) -> None:
        self.root = Path(root)
        self._base = base
        self._max_rank = max_rank
        self._lock = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True)
        for leftover in self.root.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)  # an upload cut short by a crash

    def load_all(self) -> list[StoredAdapter]:
        """Validate every stored adapter (newest version of each name); older versions are removed."""
        newest: dict[str, StoredAdapter] = {}
        for path in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            stored = StoredAdapter(validate(path, self._base, self._max_rank), _version_of(path))
            current = newest.get(stored.name)
            if current is None or stored.version > current.version:
                newest[stored.name] = stored
        for path in self.root.iterdir():
            if path.is_dir() and not path.name.startswith(".") and all(path != s.adapter.path for s in newest.values()):
                shutil.rmtree(path, ignore_errors=True)  # a version replaced just before a crash
        return sorted(newest.values(), key=lambda s: s.name)

    def install_missing(self, source: Path) -> list[str]:
        """Copy in every adapter directory under `source` whose name the store lacks; return those names.

        Adapters already stored (uploaded, replaced) win over the source's copy. Bundled adapters made
        for another base are skipped with a warning (the examples fit only the embedded model); any
        other fault in one stops the install, naming it.
        """
        if not Path(source).is_dir():
            raise InvalidAdapter(f"--install-adapters {str(source)!r} is not a directory")
        installed = []
        for path in sorted(p for p in Path(source).iterdir() if (p / MANIFEST_FILE).is_file()):
            manifest = read_manifest(path / MANIFEST_FILE)
            if manifest.base_model.fingerprint != self._base.fingerprint:
                log.warning(
                    "not installing %s: it was made for %s, not the served %s",
                    path,
                    manifest.base_model.id,
                    self._base.id,
                )
                continue
            if self._versions(manifest.name):
                continue
            staging = self.staging_dir()
            try:
                shutil.copytree(path, staging, dirs_exist_ok=True)
                installed.append(self.install(staging, None, replace=False).name)
            except InvalidAdapter as exc:
                self.discard(staging)
                raise InvalidAdapter(f"bundled adapter {str(path)!r}: {exc}") from None
            except BaseException:
                self.discard(staging)
                raise
        return installed

    def staging_dir(self) -> Path:
        """A fresh directory on the store's filesystem for an upload to unpack into."""
        return Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.root))

    def install(self, adapter_dir: Path, name: str | None, replace: bool) -> StoredAdapter:
        """Validate an unpacked adapter and move it into place as the name's next version.

        `name` (from the request) overrides the manifest's. Without `replace`, an existing name is
        AdapterExists; with it, a missing name is AdapterNotFound.
        """
        if name is not None:
            check_name(name)
            _rename_in_manifest(adapter_dir / MANIFEST_FILE, name)
        adapter = validate(adapter_dir, self._base, self._max_rank)
        _fsync_tree(adapter_dir)
        with self._lock:
            current = self._current(adapter.name)
            if current is not None and not replace:
                raise AdapterExists(
                    f"an adapter named {adapter.name!r} already exists; replace it with PUT /admin/adapters/{adapter.name}",
                    param="name",
                )
            if current is None and replace:
                raise AdapterNotFound(
                    f"no adapter named {adapter.name!r} to replace; upload it with POST", param="name"
                )
            version = 1 if current is None else current[1] + 1
            final = self.root / f"{adapter.name}@{version}"
            adapter_dir.rename(final)
            _fsync_dir(self.root)
        return StoredAdapter(dataclasses.replace(adapter, path=final), version)

    def remove_versions_before(self, name: str, version: int) -> None:
        """Delete the older versions of a name (once the new one is published)."""
        with self._lock:
            for path, path_version in self._versions(name):
                if path_version < version:
                    shutil.rmtree(path, ignore_errors=True)

    def delete(self, name: str) -> None:
        """Remove every version of a name (the rename first, so a crash leaves no half adapter)."""
        with self._lock:
            versions = self._versions(name)
            if not versions:
                raise AdapterNotFound(f"The model {name!r} does not exist", param="name")
            for path, _ in versions:
                doomed = self.root / f"{STAGING_PREFIX}deleted-{path.name}"
                path.rename(doomed)
                shutil.rmtree(doomed, ignore_errors=True)
            _fsync_dir(self.root)

    def discard(self, path: Path) -> None:
        """Remove a staging directory or an installed version that could not be published."""
        shutil.rmtree(path, ignore_errors=True)

    def _current(self, name: str) -> tuple[Path, int] | None:
        versions = self._versions(name)
        return max(versions, key=lambda v: v[1]) if versions else None

    def _versions(self, name: str) -> list[tuple[Path, int]]:
        found = []
        for path in self.root.iterdir():
            if not path.is_dir() or path.name.startswith("."):
                continue
            match = _VERSIONED.fullmatch(path.name)
            if match is not None and match["name"] == name:
                found.append((path, int(match["version"])))
            elif match is None and manifest_name(path) == name:
                found.append((path, 1))
        return found


def _version_of(path: Path) -> int:
    match = _VERSIONED.fullmatch(path.name)
    return 1 if match is None else int(match["version"])


def manifest_name(path: Path) -> str | None:
    """The name in an adapter directory's manifest, or None when it cannot be read."""
    try:
        return Manifest.model_validate_json((path / MANIFEST_FILE).read_text()).name
    except (OSError, ValueError):
        return None


def _rename_in_manifest(manifest_path: Path, name: str) -> None:
    try:
        manifest = Manifest.model_validate_json(manifest_path.read_text())
    except (OSError, ValueError):
        return  # validate() reports what is wrong with it
    if manifest.name != name:
        manifest_path.write_text(manifest.model_copy(update={"name": name}).model_dump_json(indent=2) + "\n")


def _fsync_tree(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
