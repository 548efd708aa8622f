"""/admin/adapters: upload, replace, delete and list adapters in the running server (admin key only).

Hot-swap is load → validate → publish: an upload is unpacked and validated off the request path,
moved into the store, loaded by the engine between steps, and only then visible to new requests.
Anything refused leaves no trace on disk, in memory or in /v1/models.
"""

from __future__ import annotations

import asyncio
from pathlib import Path, PurePosixPath
from tempfile import SpooledTemporaryFile
from typing import Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from adapters.archive import unpack
from adapters.errors import (
    AdapterNotFound,
    InvalidAdapter,
    PayloadTooLarge,
    QAdapterError,
)
from adapters.store import AdapterStore, StoredAdapter, manifest_name
from server.api.auth import bearer_token, check_admin_token, require_admin_key
from server.api.errors import render
from server.config import Settings
from server.engine.engine import Engine, LoadAdapter, PublishedAdapter, UnloadAdapter

ADMIN_PREFIX = "/admin/adapters"


class AdapterAdmin:
    """What the admin routes do, between the store and the engine."""

    def __init__(self, store: AdapterStore, engine: Engine, max_upload_bytes: int) -> None:
        self._store = store
        self._engine = engine
        self._max_upload_bytes = max_upload_bytes
        self._name_locks: dict[str, asyncio.Lock] = {}  # one change at a time per name, store and engine

    def _lock(self, name: str) -> asyncio.Lock:
        return self._name_locks.setdefault(name, asyncio.Lock())

    def describe(self, published: PublishedAdapter) -> dict[str, Any]:
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
            "resident": True,
            "running_requests": self._engine.stats().running_per_adapter.get(adapter.name, 0),
        }

    def get(self, name: str) -> dict[str, Any]:
        published = self._engine.published(name)
        if published is None:
            raise AdapterNotFound(f"The model {name!r} does not exist", param="name")
        return self.describe(published)

    def list(self) -> dict[str, Any]:
        return {"object": "list", "data": [self.get(name) for name in self._engine.adapter_names()]}

    async def upload(
        self, files: list[UploadFile], archive: UploadFile | None, name: str | None, replace: bool
    ) -> dict[str, Any]:
        """Unpack, validate, store, then publish; on any failure nothing stays behind."""
        staging = self._store.staging_dir()
        try:
            adapter_dir = await self._unpack(staging, files, archive)
            lock_name = name or await run_in_threadpool(manifest_name, adapter_dir) or ""
            async with self._lock(lock_name):
                stored: StoredAdapter = await run_in_threadpool(self._store.install, adapter_dir, name, replace)
                try:
                    # Shielded: once installed, a client that goes away must not leave it half-published.
                    await asyncio.shield(asyncio.wrap_future(self._engine.apply(LoadAdapter(stored.adapter, stored.version))))
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
            await asyncio.shield(asyncio.wrap_future(self._engine.apply(UnloadAdapter(name))))
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
            if not filename or PurePosixPath(filename).name != filename or filename.startswith("."):
                raise InvalidAdapter(f"upload file name {filename!r} must be a plain file name")
            await _save(upload, adapter_dir / filename)
        return adapter_dir


async def _save(upload: UploadFile, path: Path) -> None:
    with open(path, "wb") as sink:
        while chunk := await upload.read(1 << 20):
            sink.write(chunk)


def admin_of(request: Request) -> AdapterAdmin:
    return request.app.state.admin


router = APIRouter(prefix=ADMIN_PREFIX, dependencies=[Depends(require_admin_key)], tags=["admin"])


@router.get("")
async def list_adapters(admin: AdapterAdmin = Depends(admin_of)) -> dict[str, Any]:
    """Every served adapter: name, version, size, created, description, α/ω, residency, running requests."""
    return admin.list()


@router.get("/{name}")
async def get_adapter(name: str, admin: AdapterAdmin = Depends(admin_of)) -> dict[str, Any]:
    """One served adapter."""
    return admin.get(name)


@router.post("", status_code=201)
async def upload_adapter(
    files: list[UploadFile] = File(default=[], description="adapter_config.json, adapter_model.safetensors, qadapter.json"),
    archive: UploadFile | None = File(default=None, description="a .tar.gz or .zip of the adapter directory"),
    name: str | None = Form(default=None, description="the adapter's name (default: the manifest's)"),
    admin: AdapterAdmin = Depends(admin_of),
) -> dict[str, Any]:
    """Upload a new adapter; an existing name is a 409 (replace it with PUT)."""
    return await admin.upload(files, archive, name, replace=False)


@router.put("/{name}")
async def replace_adapter(
    name: str,
    files: list[UploadFile] = File(default=[]),
    archive: UploadFile | None = File(default=None),
    admin: AdapterAdmin = Depends(admin_of),
) -> dict[str, Any]:
    """Replace an adapter with a new version: running requests finish on the old one."""
    return await admin.upload(files, archive, name, replace=True)


@router.delete("/{name}")
async def delete_adapter(name: str, admin: AdapterAdmin = Depends(admin_of)) -> dict[str, Any]:
    """Delete an adapter: new requests get 404 at once; running ones finish, then its memory is freed."""
    await admin.delete(name)
    return {"name": name, "deleted": True}


class AdminGate:
    """In front of /admin: the admin key is checked before any byte of the body is read, and the
    body is counted while it streams in (413 at the limit) and spooled to disk, not memory."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self._app = app
        self._settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(ADMIN_PREFIX):
            await self._app(scope, receive, send)
            return
        limit = self._settings.max_upload_bytes
        try:
            check_admin_token(bearer_token(Request(scope)), self._settings)
            declared = dict(scope["headers"]).get(b"content-length", b"0")
            if declared.isdigit() and int(declared) > limit:
                raise PayloadTooLarge(f"the upload is over this server's limit of {limit} bytes")
            body = await _spooled_body(receive, limit)
        except QAdapterError as exc:
            status, payload, _ = render(exc)
            await JSONResponse(payload, status_code=status)(scope, receive, send)
            return
        if body is None:
            return  # the client went away
        await self._app(scope, _replay(body, receive), send)


async def _spooled_body(receive: Receive, limit: int) -> SpooledTemporaryFile | None:
    body: SpooledTemporaryFile = SpooledTemporaryFile(max_size=1 << 20)
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            body.close()
            return None
        body.write(message.get("body", b""))
        if body.tell() > limit:
            body.close()
            raise PayloadTooLarge(f"the upload is over this server's limit of {limit} bytes")
        more = message.get("more_body", False)
    body.seek(0)
    return body


def _replay(body: SpooledTemporaryFile, receive: Receive) -> Receive:
    """The spooled body as ASGI messages, then the real channel (for disconnects)."""

    async def replayed() -> dict[str, Any]:
        if body.closed:
            return await receive()
        chunk = body.read(1 << 20)
        if len(chunk) < (1 << 20):
            body.close()
            return {"type": "http.request", "body": chunk, "more_body": False}
        return {"type": "http.request", "body": chunk, "more_body": True}

    return replayed  # type: ignore[return-value]
