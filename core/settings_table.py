"""The configuration table of docs/configuration.md, made from Settings' fields (flag, variable,
default, meaning), so the docs cannot drift from the code.

    python -m qadapter.core.settings_table docs/configuration.md   # rewrites the table in place
"""

from __future__ import annotations

import sys
from pathlib import Path

from qadapter.core.settings import Settings

BEGIN = "<!-- settings table: made by `make docs` from core/settings.py; do not edit by hand -->"
END = "<!-- end of settings table -->"


def settings_table() -> str:
    """One Markdown row per setting, between the BEGIN and END markers."""
    rows = [BEGIN, "| flag | variable | default | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        flag, variable = "--" + name.replace("_", "-"), f"QADAPTER_{name.upper()}"
        rows.append(f"| `{flag}` | `{variable}` | {_shown(field.default)} | {field.description} |")
    return "\n".join([*rows, END])


def _shown(default: object) -> str:
    if default in (None, ""):
        return "(none)"
    text = str(default).replace(str(Path.home()), "~")  # the same docs whoever builds them
    return f"`{text.lower() if isinstance(default, bool) else text}`"


def rewrite(path: Path) -> None:
    """Replace the table between the markers in `path` with the current one."""
    text = path.read_text(encoding="utf-8")
    start, end = text.index(BEGIN), text.index(END) + len(END)
    path.write_text(text[:start] + settings_table() + text[end:], encoding="utf-8")


if __name__ == "__main__":
    rewrite(Path(sys.argv[1]))
