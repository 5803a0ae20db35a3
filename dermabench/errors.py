"""Errors the CLI reports as one line and a non-zero exit, without a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DermabenchError(Exception):
    """A problem with the user's input: a bad flag, file, option or plugin name."""


class PluginError(DermabenchError):
    """A plugin raised or broke its contract; the message names the plugin."""


def unknown_name(kind: str, name: str, known: Iterable[str]) -> DermabenchError:
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return DermabenchError(f"unknown {kind} '{name}'. Known: {', '.join(known) or '(none)'}.{hint}")
