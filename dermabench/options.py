"""Plugin options: declare each option once; strings from the command line are coerced and checked.

    OPTIONS = {"epochs": Option("int", 20, min=1), "balance": Option("str", "loss", choices=("loss", "none"))}

    def __init__(self, **options):
        self.config = parse_options("classifier 'mine'", options, OPTIONS)

Options reach a plugin as keyword arguments: typed values from a TOML config
file, or strings from `--generator-opt key=value`. `parse_options` turns both into
the declared types, fills defaults, and raises `DermabenchError` naming the
plugin, the option and the flag for unknown names (with the closest known one)
and bad values.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from dermabench.errors import DermabenchError

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


@dataclass(frozen=True)
class Option:
    """One plugin option: its kind ("int", "float", "bool", "str", "list"), default and constraints.

    "list" takes comma-separated words (or a TOML list) and gives a tuple of lower-case words.
    """

    kind: str
    default: Any = None
    help: str = ""
    min: float | None = None
    max: float | None = None
    min_inclusive: bool = True
    max_inclusive: bool = True
    choices: tuple[str, ...] | None = None
    #: None (or the strings "none"/"") is a valid value
    optional: bool = False
    required: bool = False

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        text = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a non-empty string",
                "list": "comma-separated words"}[self.kind]  # fmt: skip
        if self.min is not None:
            text += f" {'≥' if self.min_inclusive else '>'} {self.min:g}"
        if self.max is not None:
            text += f"{' and' if self.min is not None else ''} {'≤' if self.max_inclusive else '<'} {self.max:g}"
        if self.optional:
            text += " (or none)"
        return text

    def coerce(self, value: Any) -> Any:
        """The value as this option's type; raises ValueError when it is not acceptable."""
        if self.optional and (value is None or (isinstance(value, str) and value.strip().lower() in ("", "none"))):
            return None
        if isinstance(value, str):
            value = value.strip()
        if self.kind == "list":
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
                raise ValueError
            words = tuple(dict.fromkeys(item.strip().lower() for item in items if item.strip()))
            if not words or (self.choices is not None and any(word not in self.choices for word in words)):
                raise ValueError
            return words
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
                return value.lower() in _TRUE
            raise ValueError
        if self.kind == "int":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                value = int(value)
            elif isinstance(value, str):
                value = int(value.replace("_", ""))
            elif not isinstance(value, (int, np.integer)):
                raise ValueError
            value = int(value)
        elif self.kind == "float":
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
            if not math.isfinite(value):
                raise ValueError
        elif self.kind == "str":
            if isinstance(value, os.PathLike):
                value = os.fspath(value).strip()
            if not isinstance(value, str) or not value:
                raise ValueError
            if self.choices is not None:
                value = value.lower()
                if value not in self.choices:
                    raise ValueError
        if self.min is not None and (value < self.min or (value == self.min and not self.min_inclusive)):
            raise ValueError
        if self.max is not None and (value > self.max or (value == self.max and not self.max_inclusive)):
            raise ValueError
        return value


def parse_options(
    plugin: str, options: Mapping[str, Any], specs: Mapping[str, Option], flag: str | None = None
) -> dict[str, Any]:
    """Validate and coerce keyword options against `specs`; defaults fill the rest.

    Unknown options, missing required ones and bad values raise `DermabenchError`
    naming the plugin and the option, as the user typed them.
    """
    if flag is None:  # "classifier 'cnn'" -> --classifier-opt
        kind = plugin.split(" ", 1)[0]
        flag = f"--{kind}-opt" if kind in ("generator", "classifier", "dataset", "extractor", "captioner") else "--*-opt"
    resolved: dict[str, Any] = {}
    for key, value in options.items():
        if key not in specs:
            close = difflib.get_close_matches(key, list(specs), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            known = ", ".join(sorted(specs)) or "(none)"
            raise DermabenchError(f"{plugin}: unknown option '{key}'. Known options: {known}.{hint}")
        spec = specs[key]
        try:
            resolved[key] = spec.coerce(value)
        except (TypeError, ValueError, OverflowError):
            raise DermabenchError(
                f"{plugin}: option '{key}' must be {spec.describe()}, got {value!r} ({flag} {key}=...)"
            ) from None
    for key, spec in specs.items():
        if key not in resolved:
            if spec.required:
                raise DermabenchError(f"{plugin}: option '{key}' is required ({flag} {key}=...)")
            resolved[key] = spec.default
    return resolved
