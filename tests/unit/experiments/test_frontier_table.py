"""experiments/frontier_table.py: the README's results table is made from the frontier it reports."""

from __future__ import annotations

import json
from pathlib import Path

from experiments.frontier_table import frontier_table

ROOT = Path(__file__).resolve().parents[3]


def test_the_readme_table_is_made_from_the_frontier_it_reports() -> None:
    """The README's results are `experiments/frontier_table.py docs/frontier/frontier.json`, not a copy."""
    frontier = json.loads((ROOT / "docs" / "frontier" / "frontier.json").read_text(encoding="utf-8"))
    assert frontier_table(frontier) in (ROOT / "README.md").read_text(encoding="utf-8")
