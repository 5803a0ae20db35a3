"""Errors the CLI reports as one line and a non-zero exit, without a traceback."""

from __future__ import annotations

import difflib
import errno
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class DermabenchError(Exception):
    """A problem with the user's input: a bad flag, file, option or plugin name."""


class PluginError(DermabenchError):
    """A plugin raised or broke its contract; the message names the plugin."""


class StorageError(DermabenchError):
    """The disk refused to store something: full, over quota, read-only or not permitted. Nothing finished is lost."""


#: errno → (what happened, what the user does about it)
STORAGE_ERRNOS = {
    errno.ENOSPC: ("no space left on device", "free space"),
    errno.EDQUOT: ("disk quota exceeded", "free space or raise the quota"),
    errno.EROFS: ("read-only file system", "make it writable"),
    errno.EACCES: ("permission denied", "fix its permissions"),
    errno.EPERM: ("operation not permitted", "fix its permissions"),
}
#: an errno inside a message: Python's "[Errno 28] ..." (wrapped by torch and others) and Rust's "(os error 28)"
#: (safetensors' SafetensorError: `... (os error 28) at path "<folder>/.tmpXXXX"`)
_ERRNO_IN_TEXT = re.compile(r'\[Errno (\d+)\]|\(os error (\d+)\)(?: at path "([^"]+)")?')


def _storage_errno(exc: BaseException | None) -> tuple[int, str | None] | None:
    """(errno, file the OS named) of the first storage OSError in `exc`'s chain, or of an errno in its message."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            return exc.errno, exc.filename
        if not isinstance(exc, OSError):
            for match in _ERRNO_IN_TEXT.finditer(str(exc)):
                code = int(match.group(1) or match.group(2))
                if code in STORAGE_ERRNOS:
                    return code, match.group(3) and os.path.dirname(match.group(3))  # the folder of its temp file
        exc = exc.__cause__ or exc.__context__
    return None


def storage_error(
    exc: BaseException, path: str | os.PathLike[str] | None = None, during: str | None = None
) -> StorageError | None:
    """One line for a disk that refused a write (ENOSPC, EDQUOT, EROFS, EACCES, EPERM), else None.

    It names `path` (else the file the OS named, else what was going on: `during`) and says what to do:
    every write is atomic and every finished stage is recorded, so the same command run again resumes
    where this one stopped.
    """
    if isinstance(exc, StorageError):
        return exc
    found = _storage_errno(exc)
    if found is None:
        return None
    code, filename = found
    reason, fix = STORAGE_ERRNOS[code]
    where = path if path is not None else filename
    if where is None:
        place = f" while {during}" if during else ""
    elif code in (errno.EACCES, errno.EPERM) and path is None:  # the OS's file: maybe a read, not a write
        where = os.fsdecode(where)
        folder = os.path.dirname(where)
        if not os.path.lexists(where) and os.path.isdir(folder):  # not created: the folder refused it
            where = f"{folder} (creating {os.path.basename(where)})"
        place = f" on {where}"
    else:
        place = f" while writing {os.fsdecode(where)}"
    return StorageError(f"{reason}{place}: {fix}, then re-run the same command; finished stages are kept")


@contextmanager
def storage_errors(path: str | os.PathLike[str] | None = None, during: str | None = None) -> Iterator[None]:
    """Inside, a write the disk refused becomes a StorageError (see `storage_error`); anything else passes."""
    try:
        yield
    except DermabenchError:
        raise
    except Exception as exc:
        storage = storage_error(exc, path, during)
        if storage is None:
            raise
        raise storage from exc


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
