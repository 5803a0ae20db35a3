"""Errors the CLI reports as one line and a non-zero exit, without a traceback."""

from __future__ import annotations

import difflib
import re
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


def weights_only_refusal(exc: BaseException) -> str:
    """Why `torch.load(weights_only=True)` refused a file, in one line: the Python object it would have to build.

    torch's own message is many lines (with terminal escape codes) and begins by explaining how to load the
    file anyway; the useful part is the `GLOBAL module.Name` it would have to import.
    """
    text = str(exc)
    match = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if match:
        return f"it would have to build a {match.group(1).rstrip('.')} object"
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
