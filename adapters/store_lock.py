"""What keeps the adapter store consistent when several processes, on one host or many, share it:
an exclusive lock on `<store>/.lock` (POSIX record locks, which NFS carries across hosts), and
staging directories named for their owner, so a start removes only what a dead process left."""

from __future__ import annotations

import fcntl
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STAGING_PREFIX = ".staging-"
LOCK_FILE = ".lock"
# A staging directory of another host is left alone unless it is older than this: its owner may live.
FOREIGN_STAGING_MAX_AGE_S = 3600


class StoreLock:
    """Exclusive across threads (a lock) and across processes and hosts (a record lock on the file)."""

    def __init__(self, root: Path) -> None:
        self._path = root / LOCK_FILE
        self._threads = threading.Lock()

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._threads, open(self._path, "a+") as handle:
            fcntl.lockf(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.lockf(handle, fcntl.LOCK_UN)


def staging_prefix() -> str:
    """The prefix of this process's staging directories: `.staging-<host>-<pid>-`."""
    return f"{STAGING_PREFIX}{socket.gethostname()}-{os.getpid()}-"


def is_abandoned(path: Path, now: float) -> bool:
    """Whether a staging directory's owner is gone: a dead process of this host, or too old to be alive."""
    if path.name.startswith(f"{STAGING_PREFIX}removed-"):
        return True  # a removal's rename already made it durable: what is left is garbage
    owner = path.name.removeprefix(STAGING_PREFIX).split("-")
    host = socket.gethostname()
    if len(owner) >= 3 and "-".join(owner[:-2]) == host and owner[-2].isdigit():
        return not _is_alive(int(owner[-2]))
    try:
        return now - path.stat().st_mtime > FOREIGN_STAGING_MAX_AGE_S
    except OSError:
        return False


def _is_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is starting: what it left before is from a previous life
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
