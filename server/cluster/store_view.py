"""The adapters of the shared store as an ingress sees them: what `GET /v1/models` lists and what a
request's model name resolves to. Re-read whenever the store's directory changes (every install and
removal renames an entry in or out, which touches its mtime), so an upload through any ingress is
visible to the next request through this one."""

from __future__ import annotations

import logging
from concurrent.futures import Future

from qadapter.adapters.format import AdapterLimits, ValidatedAdapter, validate
from qadapter.adapters.identity import AdapterId, InstalledAdapter
from qadapter.adapters.store import AdapterStore
from qadapter.core.base import BaseModelInfo
from qadapter.core.errors import AdapterNotFound, InvalidAdapter
from qadapter.server.engine.registry import AdapterChange, LoadAdapter

log = logging.getLogger(__name__)


class StoreView:
    def __init__(self, store: AdapterStore, base: BaseModelInfo, limits: AdapterLimits) -> None:
        self._store = store
        self._base = base
        self._limits = limits
        self._published: dict[str, InstalledAdapter] = {}
        self._validated: dict[AdapterId, ValidatedAdapter] = {}  # each install is read once
        self._listed: int | None = None  # the store directory's mtime when last listed

    def names(self) -> list[str]:
        self._refresh()
        return list(self._published)

    def published(self, name: str) -> InstalledAdapter | None:
        self._refresh()
        return self._published.get(name)

    def snapshot(self) -> list[InstalledAdapter]:
        self._refresh()
        return list(self._published.values())

    def resolve(self, name: str) -> InstalledAdapter:
        published = self.published(name)
        if published is None:
            raise AdapterNotFound.named(name)
        return published

    def apply(self, change: AdapterChange) -> Future[None]:
        """The admin routes' change, already made in the store: check it shows (replicas learn lazily)."""
        done: Future[None] = Future()
        self._refresh(force=True)
        name = change.served_as if isinstance(change, LoadAdapter) else change.name
        if isinstance(change, LoadAdapter) or name in self._published:
            done.set_result(None)
        else:
            done.set_exception(AdapterNotFound.named(name))
        return done

    def _refresh(self, force: bool = False) -> None:
        listed = self._store.root.stat().st_mtime_ns
        if listed == self._listed and not force:
            return
        published = {}
        for name, (path, version) in self._store.current_versions().items():
            try:  # which install (a name deleted and uploaded again reuses its version numbers)
                install = AdapterId.of(name, version, path)
            except FileNotFoundError:  # removed since the listing: gone
                continue
            adapter = self._validated.get(install)
            if adapter is None:
                try:
                    adapter = validate(path, self._base, self._limits)
                except InvalidAdapter as exc:  # the start quarantined what was broken; this is new
                    log.warning("not serving %s: %s", path.name, exc)
                    continue
            published[name] = InstalledAdapter(adapter, install)
        self._validated = {p.id: p.adapter for p in published.values()}
        self._published, self._listed = published, listed
