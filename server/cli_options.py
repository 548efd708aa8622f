"""Command-line options shared by the `qadapter` subcommands, and how they become Settings."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from server.config import EMBEDDED_MODEL, Settings


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        help=f"base model: local HF directory, .gguf file, hub id, or {EMBEDDED_MODEL!r} (default; "
        "env QADAPTER_MODEL)",
    )
    parser.add_argument("--device", help="auto (default), cpu, cuda or cuda:N (env QADAPTER_DEVICE)")
    parser.add_argument(
        "--dtype", choices=["auto", "float32", "bfloat16", "float16"], help="default auto: bf16 on CUDA, fp32 on CPU"
    )
    parser.add_argument("--home", type=Path, help="cache directory (env QADAPTER_HOME, default ~/.cache/qadapter)")


def settings_from(args: argparse.Namespace) -> Settings:
    """Flags override `QADAPTER_*` variables, which override defaults."""
    given = {key: getattr(args, key, None) for key in Settings.model_fields}
    return Settings(**{key: value for key, value in given.items() if value is not None})


def positive(kind: Callable[[str], float | int], allow_zero: bool) -> Callable[[str], float | int]:
    def parse(text: str) -> float | int:
        value = kind(text)
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(f"must be {'>= 0' if allow_zero else '> 0'}, got {text}")
        return value

    return parse


def within(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text)
        if not low <= value <= high:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be in [{low:g}, {high:g}], got {text}")
        return value

    return parse


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" only where there is a default worth reading."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)
