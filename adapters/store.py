"""The persistent adapter store: one directory per adapter version, installed atomically.

Layout under the root: `<name>@<version>/` (a plain `<dir>/` is version 1 of its manifest's name),
`.staging-*` directories for uploads in progress and removals under way, and `.quarantine/`.

Every change is a rename: an install is fsynced in its staging directory and renamed into place;
a removal renames the version into a staging directory before deleting it. So a crash at any point
leaves each version complete or absent, and the start removes the staging leftovers, removes
superseded versions before it looks at them, and quarantines a broken current version instead of
refusing to start. `on_step`, when given, is told each durable step (crash tests kill there).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from qadapter.adapters.format import (
    MANIFEST_FILE,
    AdapterLimits,
    ValidatedAdapter,
    check_name,
    read_manifest,
    validate,
)
from qadapter.adapters.identity import InstalledAdapter, parse_directory, version_directory
from qadapter.adapters.quarantine import BrokenAdapter, Quarantine
from qadapter.adapters.store_lock import STAGING_PREFIX, StoreLock, is_abandoned, staging_prefix
from qadapter.core.base import BaseModelInfo
from qadapter.core.errors import AdapterExists, AdapterNotFound, InvalidAdapter

log = logging.getLogger(__name__)


class AdapterStore:
    """Thread-safe: installs and deletes of one name are serialised; one of racing uploads wins."""

    def __init__(
        self, root: Path, base: BaseModelInfo, limits: AdapterLimits, on_step: Callable[[str], None] | None = None
    ) -> None:
        self.root = Path(root)
        self._base = base
        self._limits = limits
        self._on_step = on_step
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = StoreLock(self.root)
        self._quarantine = Quarantine(self.root)

    def load_all(self) -> list[InstalledAdapter]:
        """The newest servable version of every stored name.

        Older versions are removed without being read (a replace or delete cut short leaves them);
        a current version that does not validate is quarantined and the next older one tried, so one
        broken directory never stops the start.
        """
        with self._lock.held():
            return self._recover()

    def _recover(self) -> list[InstalledAdapter]:
        now = time.time()
        for leftover in self.root.glob(f"{STAGING_PREFIX}*"):
            if is_abandoned(leftover, now):
                shutil.rmtree(leftover, ignore_errors=True)  # an upload or a removal cut short by a crash
        served = []
        for _, versions in sorted(self.all_versions().items()):
            current = None
            for path, version in sorted(versions, key=lambda v: v[1], reverse=True):
                if current is not None:
                    self._remove(path)  # superseded
                    continue
                try:
                    current = InstalledAdapter.at(self._validate(path), version)
                except InvalidAdapter as exc:
                    self._quarantine.put(path, str(exc))
            if current is not None:
                served.append(current)
        return served

    def current_versions(self) -> dict[str, tuple[Path, int]]:
        """The newest version of every stored name (path, version), unvalidated: a cheap listing."""
        return {name: max(versions, key=lambda v: v[1]) for name, versions in self.all_versions().items()}

    def version_path(self, name: str, version: int) -> Path | None:
        """Where one stored version of a name lies, or None when it is gone (replaced, deleted)."""
        return next((path for path, v in self._versions(name) if v == version), None)

    def broken(self) -> list[BrokenAdapter]:
        """The quarantined directories, with why each was moved aside."""
        return self._quarantine.entries()

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
        return Path(tempfile.mkdtemp(prefix=staging_prefix(), dir=self.root))

    def install(self, adapter_dir: Path, name: str | None, replace: bool) -> InstalledAdapter:
        """Validate an unpacked adapter and move it into place as the name's next version.

        `name` (from the request) overrides the manifest's. Without `replace`, an existing name is
        AdapterExists; with it, a missing name is AdapterNotFound.
        """
        if name is not None:
            check_name(name)
            _rename_in_manifest(adapter_dir / MANIFEST_FILE, name)
        adapter = self._validate(adapter_dir)
        _fsync_tree(adapter_dir)
        self._step("install: fsynced")
        with self._lock.held():
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
            final = self.root / version_directory(adapter.name, version)
            adapter_dir.rename(final)
            self._step("install: renamed")
            _fsync_dir(self.root)
            self._step("install: done")
        return InstalledAdapter.at(dataclasses.replace(adapter, path=final), version)

    def remove_versions_before(self, name: str, version: int) -> None:
        """Delete the older versions of a name (once the new one is published)."""
        with self._lock.held():
            for path, path_version in sorted(self._versions(name), key=lambda v: v[1]):
                if path_version < version:
                    self._remove(path)

    def delete(self, name: str) -> None:
        """Remove every version of a name, oldest first: a crash part-way leaves the current one whole."""
        with self._lock.held():
            versions = self._versions(name)
            if not versions:
                raise AdapterNotFound.named(name, param="name")
            for path, _ in sorted(versions, key=lambda v: v[1]):
                self._remove(path)

    def discard(self, path: Path) -> None:
        """Remove a staging directory or an installed version that could not be published."""
        shutil.rmtree(path, ignore_errors=True)

    def _validate(self, path: Path) -> ValidatedAdapter:
        adapter = validate(path, self._base, self._limits)
        if adapter.name == self._base.id:
            raise InvalidAdapter(
                f"adapter name {adapter.name!r} is the base model's id, which requests use for the base; "
                "choose another name",
                param="name",
            )
        return adapter

    def _remove(self, path: Path) -> None:
        """Rename a version away (one atomic step), then delete it."""
        doomed = self.root / f"{STAGING_PREFIX}removed-{path.name}-{uuid.uuid4().hex[:8]}"
        path.rename(doomed)
        _fsync_dir(self.root)
        self._step("remove: renamed")
        shutil.rmtree(doomed, ignore_errors=True)
        self._step("remove: done")

    def _step(self, label: str) -> None:
        if self._on_step is not None:
            self._on_step(label)

    def all_versions(self) -> dict[str, list[tuple[Path, int]]]:
        """Every stored version by name (a plain directory whose manifest cannot be read goes by its own name)."""
        found: dict[str, list[tuple[Path, int]]] = {}
        for path in self.root.iterdir():
            if path.is_dir() and not path.name.startswith("."):
                name, version = parse_directory(path.name) or (manifest_name(path) or path.name, 1)
                found.setdefault(name, []).append((path, version))
        return found

    def _current(self, name: str) -> tuple[Path, int] | None:
        versions = self._versions(name)
        return max(versions, key=lambda v: v[1]) if versions else None

    def _versions(self, name: str) -> list[tuple[Path, int]]:
        return self.all_versions().get(name, [])


def manifest_name(path: Path) -> str | None:
    """The name in an adapter directory's manifest, or None when it cannot be read."""
    try:
        return read_manifest(path / MANIFEST_FILE).name
    except (OSError, InvalidAdapter):
        return None


def _rename_in_manifest(manifest_path: Path, name: str) -> None:
    try:
        manifest = read_manifest(manifest_path)
    except (OSError, InvalidAdapter):
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
