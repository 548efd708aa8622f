"""What each call sends and how its answer parses, shared by the sync and the async client."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Generic, TypeVar
from urllib.parse import quote

from qadapter.client.types import Adapter, Completion, Model, Sampling

T = TypeVar("T")
Messages = str | Sequence[Mapping[str, Any]]
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")
MANIFEST = "qadapter.json"


@dataclass(frozen=True)
class Call(Generic[T]):
    """One HTTP call: built once, sent (and maybe retried) by either client, its JSON answer parsed."""

    method: str
    path: str
    parse: Callable[[Any], T]
    is_admin: bool = False  # sent with the admin key instead of the API key
    # Retried on 503 and connection errors: reads and generation change nothing on the server;
    # uploads and deletes do, and a retry after a lost answer could repeat or misreport them.
    is_idempotent: bool = True
    json: dict[str, Any] | None = None
    data: dict[str, str] | None = None
    uploads: tuple[tuple[str, Path], ...] = ()  # (form field, file) sent as multipart


def complete(model: str, prompt: str | list[str], stream: bool, sampling: Sampling) -> Call[Completion]:
    return Call(
        "POST", "/v1/completions", Completion.from_json, json=_generation_body(model, stream, sampling, prompt=prompt)
    )


def chat(model: str, messages: Messages, stream: bool, sampling: Sampling) -> Call[Completion]:
    turns = [{"role": "user", "content": messages}] if isinstance(messages, str) else [dict(m) for m in messages]
    return Call(
        "POST",
        "/v1/chat/completions",
        Completion.from_json,
        json=_generation_body(model, stream, sampling, messages=turns),
    )


def models() -> Call[list[Model]]:
    return Call("GET", "/v1/models", lambda data: [Model.from_json(m) for m in data["data"]])


def list_adapters() -> Call[list[Adapter]]:
    return Call("GET", "/admin/adapters", lambda data: [Adapter.from_json(a) for a in data["data"]], is_admin=True)


def get_adapter(name: str) -> Call[Adapter]:
    return Call("GET", f"/admin/adapters/{quote(name, safe='')}", Adapter.from_json, is_admin=True)


def delete_adapter(name: str) -> Call[None]:
    return Call("DELETE", f"/admin/adapters/{quote(name, safe='')}", lambda _: None, is_admin=True, is_idempotent=False)


def upload_adapter(path: str | Path, name: str | None, replace: bool) -> Call[Adapter]:
    """An adapter directory (its files) or a .tar.gz/.zip of one; replace=True makes the next version."""
    path = Path(path)
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith("."))
        if not files:
            raise ValueError(f"{path} holds no files: give an adapter directory or a .tar.gz/.zip of one")
        uploads = tuple(("files", f) for f in files)
    elif path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES):
        uploads = (("archive", path),)
    elif path.exists():
        raise ValueError(f"{path} is neither an adapter directory nor a {'/'.join(ARCHIVE_SUFFIXES)} archive")
    else:
        raise FileNotFoundError(f"no adapter at {path}")
    if not replace:
        return Call(
            "POST",
            "/admin/adapters",
            Adapter.from_json,
            is_admin=True,
            is_idempotent=False,
            data={"name": name} if name else None,
            uploads=uploads,
        )
    name = name or _manifest_name(path)
    return Call(
        "PUT",
        f"/admin/adapters/{quote(name, safe='')}",
        Adapter.from_json,
        is_admin=True,
        is_idempotent=False,
        uploads=uploads,
    )


def open_uploads(call: Call[Any], stack: ExitStack) -> list[tuple[str, tuple[str, BinaryIO, str]]] | None:
    """The multipart files of an upload, opened for streaming (closed with `stack`)."""
    if not call.uploads:
        return None
    return [
        (form_field, (path.name, stack.enter_context(open(path, "rb")), "application/octet-stream"))
        for form_field, path in call.uploads
    ]


def _generation_body(model: str, stream: bool, sampling: Sampling, **inputs: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, **inputs, **sampling, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def _manifest_name(path: Path) -> str:
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise ValueError(
            f"pass name= to replace an adapter from {path} (its name is read from {MANIFEST} only in a directory)"
        )
    try:
        return str(json.loads(manifest.read_text())["name"])
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{manifest} has no readable adapter name; pass name=") from None
