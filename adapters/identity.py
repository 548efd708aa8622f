"""The one name of an adapter install, used by every layer: the store's directories, the engine's
registry and residency, the cluster's multiplexed model ids, stats and metrics."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qadapter.adapters.format import ValidatedAdapter

# Adapter names never hold "@" (format.NAME_PATTERN), so it can separate the parts.
_KEY = re.compile(r"(?P<name>[^@]+)@(?P<version>\d+)@(?P<install>\d+)")
_DIRECTORY = re.compile(r"(?P<name>[^@]+)@(?P<version>\d+)")


@dataclass(frozen=True)
class AdapterId:
    """One install of one version of a named adapter.

    `version` counts uploads of a name (the store's); `install` tells two installs of one name and
    version apart (a name deleted and uploaded again starts over at version 1): the install
    directory's mtime in nanoseconds, which nothing changes once installed, so every process that
    reads the directory agrees on it.
    """

    name: str
    version: int
    install: int

    @classmethod
    def of(cls, name: str, version: int, path: Path) -> AdapterId:
        """The id of the version installed at `path` (raises FileNotFoundError when it is gone)."""
        return cls(name, version, path.stat().st_mtime_ns)

    @property
    def key(self) -> str:
        """`name@version@install`: the engine's key for what requests pin, and Ray's model id."""
        return f"{self.name}@{self.version}@{self.install}"

    @classmethod
    def parse(cls, key: str) -> AdapterId:
        match = _KEY.fullmatch(key)
        if match is None:
            raise ValueError(f"not an adapter key (name@version@install): {key!r}")
        return cls(match["name"], int(match["version"]), int(match["install"]))


@dataclass(frozen=True)
class InstalledAdapter:
    """One installed version of an adapter: what the store lists and what the engine publishes."""

    adapter: ValidatedAdapter
    id: AdapterId

    @classmethod
    def at(cls, adapter: ValidatedAdapter, version: int) -> InstalledAdapter:
        """The install of `adapter` as `version`, at its path (raises FileNotFoundError when it is gone)."""
        return cls(adapter, AdapterId.of(adapter.name, version, adapter.path))

    @property
    def name(self) -> str:
        return self.id.name

    @property
    def version(self) -> int:
        return self.id.version

    @property
    def key(self) -> str:
        return self.id.key


def version_directory(name: str, version: int) -> str:
    """`name@version`: the store directory of one version."""
    return f"{name}@{version}"


def parse_directory(directory: str) -> tuple[str, int] | None:
    """(name, version) of a store directory name, or None for anything else in the store."""
    match = _DIRECTORY.fullmatch(directory)
    return None if match is None else (match["name"], int(match["version"]))


def name_of(key: str) -> str:
    return AdapterId.parse(key).name
