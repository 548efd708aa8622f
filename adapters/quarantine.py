"""Where the store puts a version it cannot serve (broken on disk, or named like the base model), so
that one bad directory never stops a start: moved aside whole, with the reason beside it."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

QUARANTINE_DIR = ".quarantine"
_REASON_FILE = "quarantined.json"


@dataclass(frozen=True)
class BrokenAdapter:
    """A quarantined directory: the name it was stored under, why it was moved, when, and where to."""

    stored_as: str
    reason: str
    quarantined_at: str
    path: str


class Quarantine:
    def __init__(self, store_root: Path) -> None:
        self.root = store_root / QUARANTINE_DIR

    def put(self, path: Path, reason: str) -> None:
        """Move `path` (a directory of the store) aside, with the reason; it is never served again."""
        self.root.mkdir(exist_ok=True)
        when = datetime.now(UTC)
        target = self.root / f"{path.name}.{when.strftime('%Y%m%dT%H%M%S%f')}"
        os.rename(path, target)  # atomic: a crash leaves it in the store (quarantined again) or here
        record = BrokenAdapter(path.name, reason, when.isoformat(), str(target))
        (target / _REASON_FILE).write_text(json.dumps(asdict(record), indent=2) + "\n", encoding="utf-8")
        log.error("quarantined adapter directory %s (%s): %s", path.name, target, reason)

    def entries(self) -> list[BrokenAdapter]:
        """Every quarantined directory, oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for directory in sorted(p for p in self.root.iterdir() if p.is_dir()):
            try:
                found.append(BrokenAdapter(**json.loads((directory / _REASON_FILE).read_text(encoding="utf-8"))))
            except (OSError, ValueError, TypeError):  # moved but not yet described when a crash came
                found.append(
                    BrokenAdapter(directory.name, "unknown (a crash came while it was moved)", "", str(directory))
                )
        return sorted(found, key=lambda b: b.quarantined_at)
