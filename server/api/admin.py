"""/admin/adapters: upload, replace, delete and list adapters in the running server (admin key only);
thin routes over `AdapterAdmin`. The body of every admin request passes `RequestGate` first."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, File, Form, Request, Security, UploadFile

from qadapter.server.api.admin_service import AdapterAdmin
from qadapter.server.api.auth import require_admin_key
from qadapter.server.api.openapi import admin_key_scheme, error_responses

ADMIN_PREFIX = "/admin/adapters"


def admin_of(request: Request) -> AdapterAdmin:
    return request.app.state.admin


router = APIRouter(
    prefix=ADMIN_PREFIX,
    dependencies=[Security(admin_key_scheme), Depends(require_admin_key)],
    tags=["admin"],
    responses=error_responses(401, 403, 500),
)


@router.get("")
async def list_adapters(admin: AdapterAdmin = Depends(admin_of)) -> dict[str, Any]:
    """Every served adapter: name, version, size, created, description, α/ω, residency, running requests."""
    return admin.list()


@router.get("/{name}", responses=error_responses(404))
async def get_adapter(name: str, admin: AdapterAdmin = Depends(admin_of)) -> dict[str, Any]:
    """One served adapter."""
    return admin.get(name)


@router.post("", status_code=201, responses=error_responses(400, 408, 409, 413, 503))
async def upload_adapter(
    files: list[UploadFile] = File(
        default=[], description="adapter_config.json, adapter_model.safetensors, qadapter.json"
    ),
    archive: UploadFile | None = File(default=None, description="a .tar.gz or .zip of the adapter directory"),
    name: str | None = Form(default=None, description="the adapter's name (default: the manifest's)"),
    admin: AdapterAdmin = Depends(admin_of),
) -> dict[str, Any]:
    """Upload a new adapter; an existing name is a 409 (replace it with PUT)."""
    return await admin.upload(files, archive, name, replace=False)


@router.put("/{name}", responses=error_responses(400, 404, 408, 413, 503))
async def replace_adapter(
    name: str,
    files: list[UploadFile] = File(default=[]),
    archive: UploadFile | None = File(default=None),
    admin: AdapterAdmin = Depends(admin_of),
) -> dict[str, Any]:
    """Replace an adapter with a new version: running requests finish on the old one."""
    return await admin.upload(files, archive, name, replace=True)


@router.delete("/{name}", responses=error_responses(404, 503))
async def delete_adapter(name: str, admin: AdapterAdmin = Depends(admin_of)) -> dict[str, Any]:
    """Delete an adapter: new requests get 404 at once; running ones finish, then its memory is freed."""
    await admin.delete(name)
    return {"name": name, "deleted": True}
