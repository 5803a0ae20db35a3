"""The result JSON: the single source of truth every table and report is rendered from.

Files are written atomically (temp file in the same folder, fsync, rename), so a
reader never sees half a result, and a finished result is never overwritten.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

from dermabench.errors import DermabenchError, storage_errors

SCHEMA_VERSION = 1
RESULT_FILE = "result.json"
PROTOCOL = {"name": "real-vs-synthetic", "version": 2}
REQUIRED_KEYS = (
    "schema_version", "run_id", "created", "dermabench_version", "git_commit", "protocol", "profile",
    "config", "plugins", "data", "fidelity", "memorization", "arms", "timings_s", "environment",
)  # fmt: skip
ARM_KEYS = (
    "n_real", "n_synthetic", "seeds", "accuracy", "auc", "balanced_accuracy", "sensitivity",
    "specificity", "f1", "auc_ci95", "accuracy_ci95",
)  # fmt: skip
TRACKED_PACKAGES = (
    "torch", "torchvision", "diffusers", "peft", "transformers", "accelerate", "timm",
    "torch-fidelity", "scikit-learn", "numpy", "pillow", "pluggy",
)  # fmt: skip


def _usual_permissions(fd: int) -> None:
    """mkstemp makes 0600 files; give results the 0666 & ~umask any plain open() gives (group-readable
    on a shared cluster when the umask says so)."""
    if hasattr(os, "fchmod"):
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)


@contextmanager
def atomic_file(path: Path, overwrite: bool = True) -> Iterator[BinaryIO]:
    """A binary handle whose bytes appear at `path` complete or not at all: a temp file in the same folder,
    fsync, rename. A failed write leaves `path` as it was and removes the temp file; a full, read-only or
    forbidden disk raises StorageError naming `path`.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise DermabenchError(f"refusing to overwrite finished result {path}")
    tmp = None
    try:
        with storage_errors(path):  # a writer may wrap the OSError (torch.save: a RuntimeError from its zip writer)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            _usual_permissions(fd)
            with os.fdopen(fd, "wb") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            if overwrite:
                os.replace(tmp, path)
                tmp = None
            else:
                try:
                    os.link(tmp, path)  # fails if `path` appeared meanwhile: never clobber a finished result
                except FileExistsError:
                    raise DermabenchError(f"refusing to overwrite finished result {path}") from None
    except OSError as exc:
        raise DermabenchError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        if tmp is not None:
            with suppress(OSError):
                os.unlink(tmp)


def write_bytes_atomic(path: Path, data: bytes, overwrite: bool = True) -> Path:
    """Write `data` to `path` so that `path` holds either its old content or all of `data`."""
    with atomic_file(path, overwrite) as handle:
        handle.write(data)
    return Path(path)


def write_json_atomic(path: Path, data: Any, overwrite: bool = True) -> Path:
    text = json.dumps(jsonable(data), indent=2, sort_keys=False, allow_nan=False)
    return write_bytes_atomic(path, (text + "\n").encode(), overwrite=overwrite)


def jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars to Python, NaN/inf to None (JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def git_commit() -> str | None:
    """The commit of the dermabench source tree, when it runs from a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(device: str) -> dict[str, Any]:
    packages = {}
    for name in TRACKED_PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "packages": packages,
    }


def validate_result(result: dict) -> None:
    """Raise ValueError if `result` breaks the result-JSON contract of DESIGN.md."""
    missing = [key for key in REQUIRED_KEYS if key not in result]
    if missing:
        raise ValueError(f"result is missing keys: {missing}")
    if result["schema_version"] != SCHEMA_VERSION:
        raise ValueError(f"schema_version {result['schema_version']} is not {SCHEMA_VERSION}")
    if "real" not in result["arms"]:
        raise ValueError("result has no 'real' arm")
    for arm, values in result["arms"].items():
        missing = [key for key in ARM_KEYS if key not in values]
        if missing:
            raise ValueError(f"arm '{arm}' is missing keys: {missing}")
        if arm != "real" and "delta_vs_real" not in values:
            raise ValueError(f"arm '{arm}' has no delta_vs_real")


def load_results(results_dir: Path) -> Iterator[tuple[Path, dict]]:
    """Every finished run under `results_dir` (any depth; or one result file), oldest first.

    A broken or foreign result file is skipped with a warning on stderr naming it and why: a table that
    silently lost a row would be trusted."""
    results_dir = Path(results_dir)
    if not results_dir.exists():
        raise DermabenchError(f"results folder does not exist: {results_dir}")
    found = []
    paths = [results_dir] if results_dir.is_file() else sorted(results_dir.rglob(RESULT_FILE))
    for path in paths:
        try:
            result = json.loads(path.read_text())
            validate_result(result)
        except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:  # not a result dict at all
            print(f"warning: skipped {path}: {exc}", file=sys.stderr)
            continue
        found.append((path, result))
    yield from sorted(found, key=lambda item: item[1].get("created", ""))
