"""Safe unpacking of uploaded adapter archives (.tar.gz / .zip): regular files only, inside the target."""

from __future__ import annotations

import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO

from qadapter.adapters.format import MANIFEST_FILE
from qadapter.core.errors import InvalidAdapter

MAX_ENTRIES = 32
MAX_NAME_BYTES = 255  # of one path component, as most file systems allow


def unpack(archive: Path, target: Path, max_bytes: int) -> Path:
    """Unpack `archive` into `target`; return the directory holding the manifest.

    Refuses absolute paths, `..`, links and devices, more than MAX_ENTRIES entries and more than
    `max_bytes` uncompressed, before writing anything.
    """
    try:
        return _unpack(archive, target, max_bytes)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InvalidAdapter(f"the upload is not a readable .tar.gz or .zip archive ({reason})") from None


def _unpack(archive: Path, target: Path, max_bytes: int) -> Path:
    with _entries(archive) as entries:
        regular = []
        for name, kind, size, opener in entries:
            _check_path(name)
            if kind == "dir":
                continue
            if kind != "file":
                raise InvalidAdapter(f"archive entry {name!r} is a {kind}; only regular files are allowed")
            regular.append((name, size, opener))
        if len(regular) > MAX_ENTRIES:
            raise InvalidAdapter(f"archive holds {len(regular)} files; at most {MAX_ENTRIES} are allowed")
        if sum(size for _, size, _ in regular) > max_bytes:
            raise InvalidAdapter(f"archive unpacks to more than {max_bytes} bytes")
        for name, _, opener in regular:
            destination = target / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            with opener() as source, open(destination, "wb") as sink:
                shutil.copyfileobj(source, sink)
    manifests = sorted(target.rglob(MANIFEST_FILE))
    if len(manifests) != 1:
        raise InvalidAdapter(f"the archive must hold exactly one adapter directory with {MANIFEST_FILE}")
    return manifests[0].parent


Entry = tuple[str, str, int, Callable[[], IO[bytes]]]  # name, kind, size, open


@contextmanager
def _entries(archive: Path) -> Iterator[list[Entry]]:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zipped:
            yield [(i.filename, _zip_kind(i), i.file_size, lambda i=i: zipped.open(i)) for i in zipped.infolist()]
        return
    with tarfile.open(archive, mode="r:*") as tarred:
        members = []
        for member in tarred:  # lazily: a bomb of headers stops at the entry limit
            members.append(member)
            if len(members) > 2 * MAX_ENTRIES:
                raise InvalidAdapter(f"the archive holds more than {MAX_ENTRIES} files")
        yield [(m.name, _tar_kind(m), m.size, lambda m=m: tarred.extractfile(m)) for m in members]


def check_file_name(name: str, what: str) -> None:
    """Refuse a name no file system takes as given: empty, over 255 bytes, or with control characters."""
    if not name or len(name.encode("utf-8", errors="replace")) > MAX_NAME_BYTES:
        raise InvalidAdapter(f"{what} {name[:64]!r}… must be 1 to {MAX_NAME_BYTES} bytes long")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidAdapter(f"{what} {name!r} holds control characters")


def _check_path(name: str) -> None:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or name.startswith("\\") or re.match(r"[A-Za-z]:", name):
        raise InvalidAdapter(f"archive entry {name!r} has an absolute path")
    if ".." in path.parts:
        raise InvalidAdapter(f"archive entry {name!r} points outside the archive ('..')")
    for part in path.parts:
        check_file_name(part, "archive entry name")


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.isfile():
        return "file"
    if member.isdir():
        return "dir"
    if member.issym():
        return "symlink"
    return "hard link" if member.islnk() else "device or special file"


def _zip_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symlink"
    return "dir" if info.is_dir() else "file"
