"""Command-line options made from Settings' fields, the checks of other numeric flags, and how flags
become Settings (a flag wins over its `QADAPTER_*` variable, which wins over the default)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable
from typing import Any, Literal, get_args, get_origin

from pydantic import ValidationError

from qadapter.core.knobs import MAX_ALPHA, MAX_OMEGA, MAX_STRENGTH, MIN_ALPHA, check_knob_choice
from qadapter.core.settings import Settings

# The base-model options every command that loads a model takes.
MODEL_SETTINGS = ("model", "device", "dtype", "home")


def add_settings_options(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    """One `--flag` per Settings field: its description, default and variable as the help."""
    for name in names:
        field = Settings.model_fields[name]
        flag = "--" + name.replace("_", "-")
        default = "none" if field.default in (None, "") else field.default
        help_text = f"{field.description} Default {default}; env QADAPTER_{name.upper()}."
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif get_origin(field.annotation) is Literal:
            parser.add_argument(flag, choices=get_args(field.annotation), default=None, help=help_text)
        else:
            parser.add_argument(flag, type=_setting_value(name), default=None, metavar=name.upper(), help=help_text)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    add_settings_options(parser, MODEL_SETTINGS)


def add_knob_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, flags: tuple[str, str], purpose: str
) -> None:
    """A pair of flags (alpha, omega) for Q-adapter knobs, within the knobs' bounds; `purpose` ends the help."""
    alpha, omega = flags
    parser.add_argument(alpha, type=within(MIN_ALPHA, MAX_ALPHA), help=f"alpha ({MIN_ALPHA:g}-{MAX_ALPHA:g}) {purpose}")
    parser.add_argument(omega, type=within(0.0, MAX_OMEGA), help=f"omega (0-{MAX_OMEGA:g}) {purpose}")


def add_strength_option(parser: argparse.ArgumentParser) -> None:
    """--strength: instead of --alpha/--omega, a point between the base model and the adapter."""
    parser.add_argument(
        "--strength",
        type=within(0.0, MAX_STRENGTH),
        help="instead of --alpha/--omega: 0 serves the base model, 1 the adapter as trained, more is stronger "
        "(docs/api.md: the same knob as the API's)",
    )


def knob_choice(args: argparse.Namespace) -> tuple[float | None, float | None, float | None]:
    """(--alpha, --omega, --strength) once checked to be a pair, a strength, or none."""
    check_knob_choice(args.alpha, args.omega, args.strength)
    return args.alpha, args.omega, args.strength


def settings_from(args: argparse.Namespace) -> Settings:
    """Flags override `QADAPTER_*` variables, which override defaults."""
    given = {key: getattr(args, key, None) for key in Settings.model_fields}
    return Settings(**{key: value for key, value in given.items() if value is not None})


def _setting_value(name: str) -> Callable[[str], Any]:
    """Parse a flag as its Settings field would, with the field's own bounds."""

    def parse(text: str) -> Any:
        checked = Settings.model_construct()
        try:
            Settings.__pydantic_validator__.validate_assignment(checked, name, text)
        except ValidationError as exc:
            raise argparse.ArgumentTypeError(f"{exc.errors()[0]['msg']}, got {text!r}") from None
        return getattr(checked, name)

    parse.__name__ = name  # argparse names the type in its messages
    return parse


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
        if action.default in (None, False, ""):
            return action.help
        return super()._get_help_string(action)
