"""What the admin routes do, between the adapter store and the engine.

Hot-swap is load → validate → publish: an upload is unpacked and validated off the request path,
moved into the store, loaded by the engine between steps, and only then visible to new requests.
Anything refused leaves no trace on disk, in memory or in /v1/models.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import UploadFile
from fastapi.concurrency import run_in_threadpool

from qadapter.adapters.archive import check_file_name, unpack
from qadapter.adapters.identity import InstalledAdapter
from qadapter.adapters.store import AdapterStore, manifest_name
from qadapter.core.errors import AdapterNotFound, InvalidAdapter
from qadapter.server.engine.interface import ServingEngine
from qadapter.server.engine.registry import LoadAdapter, UnloadAdapter
from qadapter.server.engine.stats import by_adapter_name


class AdapterAdmin:
    """What the admin routes do, between the store and the engine."""

    def __init__(self, store: AdapterStore, engine: ServingEngine, max_upload_bytes: int) -> None:
        self._store = store
        self._engine = engine
        self._max_upload_bytes = max_upload_bytes
        self._name_locks: dict[str, asyncio.Lock] = {}  # one change at a time per name, store and engine

    def _lock(self, name: str) -> asyncio.Lock:
        return self._name_locks.setdefault(name, asyncio.Lock())

    def describe(self, published: InstalledAdapter) -> dict[str, Any]:
        adapter, manifest = published.adapter, published.adapter.manifest
        return {
            "name": adapter.name,
            "version": published.version,
            "description": manifest.description,
            "created": manifest.created.isoformat(),
            "alpha": manifest.alpha,
            "omega": manifest.omega,
            "size_bytes": adapter.size_bytes,
            "base_model": manifest.base_model.model_dump(),
            "resident": self._engine.is_resident(adapter.name),
            "running_requests": sum(
                by_adapter_name(stats.running_per_adapter).get(adapter.name, 0)
                for stats in self._engine.replica_stats().values()
            ),
        }

    def get(self, name: str) -> dict[str, Any]:
        published = self._engine.adapters.published(name)
        if published is None:
            raise AdapterNotFound.named(name, param="name")
        return self.describe(published)

    def list(self) -> dict[str, Any]:
        """The served adapters, and the quarantined directories the store could not serve."""
        served = [self.describe(p) for p in self._engine.adapters.snapshot()]
        return {"object": "list", "data": served, "broken": [asdict(b) for b in self._store.broken()]}

    async def upload(
        self, files: list[UploadFile], archive: UploadFile | None, name: str | None, replace: bool
    ) -> dict[str, Any]:
        """Unpack, validate, store, then publish; on any failure nothing stays behind."""
        staging = self._store.staging_dir()
        try:
            adapter_dir = await self._unpack(staging, files, archive)
            lock_name = name or await run_in_threadpool(manifest_name, adapter_dir) or ""
            async with self._lock(lock_name):
                stored: InstalledAdapter = await run_in_threadpool(self._store.install, adapter_dir, name, replace)
                try:
                    # Shielded: once installed, a client that goes away must not leave it half-published.
                    await asyncio.shield(
                        asyncio.wrap_future(self._engine.adapters.apply(LoadAdapter(stored.adapter, stored.version)))
                    )
                except Exception:
                    self._store.discard(stored.adapter.path)
                    raise
                await run_in_threadpool(self._store.remove_versions_before, stored.name, stored.version)
                return self.get(stored.name)
        finally:
            self._store.discard(staging)

    async def delete(self, name: str) -> None:
        """Unpublish at once (running requests finish on it), then remove it from the store."""
        async with self._lock(name):
            await asyncio.shield(asyncio.wrap_future(self._engine.adapters.apply(UnloadAdapter(name))))
            await run_in_threadpool(self._store.delete, name)

    async def _unpack(self, staging: Path, files: list[UploadFile], archive: UploadFile | None) -> Path:
        if bool(files) == (archive is not None):
            raise InvalidAdapter("send either the adapter's files as 'files' or one 'archive' (.tar.gz or .zip)")
        if archive is not None:
            packed = staging / "upload.archive"
            await _save(archive, packed)
            target = staging / "unpacked"
            adapter_dir = await run_in_threadpool(unpack, packed, target, self._max_upload_bytes)
            packed.unlink()
            return adapter_dir
        adapter_dir = staging / "adapter"
        adapter_dir.mkdir()
        for upload in files:
            filename = upload.filename or ""
            check_file_name(filename, "upload file name")
            if PurePosixPath(filename).name != filename or filename.startswith("."):
                raise InvalidAdapter(f"upload file name {filename!r} must be a plain file name")
            await _save(upload, adapter_dir / filename)
        return adapter_dir


async def _save(upload: UploadFile, path: Path) -> None:
    with open(path, "wb") as sink:
        while chunk := await upload.read(1 << 20):
            sink.write(chunk)
