"""Finished protocol stages of one run, each stored with a hash of its inputs, so a killed run resumes.

A stage's record is `<run_dir>/stages/<name>.json`: the hash of everything the
stage read and what it produced. Starting the same command again (same `--out`)
reuses every record whose inputs hash still matches and recomputes the rest; a
record whose inputs changed is ignored, never trusted. Records are written
atomically, so a run killed mid-write leaves either the old state or the new one.

Long stages with their own state resume inside the stage instead: generation in
shards (`generation.py`), generator fine-tuning from its checkpoints (the
generator's `work_dir`).

Stages whose output is fully determined by their inputs (captions, fidelity) are
also kept in `<out>/.cache/stages/<name>-<key>.json`, so that another run —
`--force`, or a second generator on the same split — reads them instead of
computing them again. Every record's key, the run's own and the shared, holds the
stage's inputs and the run's identity: what the run folder implies (seed, profile,
device, datasets, image size, versions) and, once loaded, the fingerprint of the
data itself (`data_fingerprint.py`), so a record made from other pixels, labels or
lesion ids under the same image ids is never read back.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import suppress
from pathlib import Path
from typing import Any

from dermabench.errors import DermabenchError
from dermabench.results import write_json_atomic


def inputs_hash(inputs: Any) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


class Stages:
    """The records of one run's finished stages; `shared`: the folder of records other runs may reuse."""

    def __init__(self, run_dir: Path, shared: Path | None = None, identity: dict | None = None) -> None:
        self.folder = Path(run_dir) / "stages"
        self.shared = shared
        #: what the run folder implies and the data's fingerprint, part of every record's key; the run
        #: adds the fingerprint once the data is loaded, so this is the run's dict, not a copy
        self.identity = identity if identity is not None else {}
        self.reused: list[str] = []
        #: stages read from another run's shared record
        self.shared_hits: list[str] = []

    def _path(self, name: str) -> Path:
        return self.folder / f"{_file_name(name)}.json"

    def _shared_path(self, name: str, inputs: Any) -> Path:
        assert self.shared is not None
        return self.shared / f"{_file_name(name)}-{self._key(inputs)[:32]}.json"

    def _key(self, inputs: Any) -> str:
        return inputs_hash({"inputs": inputs, **self.identity})

    def load(self, name: str, inputs: Any, reuse: bool = True, shared: bool = False) -> Any | None:
        """The stored output of `name` if it finished with these inputs, else None.

        `reuse=False`: reading back what this run just wrote, not resuming (not counted in `reused`).
        `shared`: failing this run's own record, another run's shared record of the same inputs.
        """
        key = self._key(inputs)
        output = _read(self._path(name), key)
        if output is not None:
            if reuse:
                self.reused.append(name)
            return output
        if shared and self.shared is not None:
            output = _read(self._shared_path(name, inputs), key)
            if output is not None:
                self.shared_hits.append(name)
                return output
        return None

    def save(self, name: str, inputs: Any, output: Any, shared: bool = False) -> Any:
        record = {"stage": name, "inputs": self._key(inputs), "output": output}
        write_json_atomic(self._path(name), record)
        if shared and self.shared is not None:
            write_json_atomic(self._shared_path(name, inputs), record)
        return output


def _file_name(name: str) -> str:
    return name.replace("+", "-").replace("/", "-")


def _read(path: Path, inputs: str) -> Any | None:
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # a damaged record is recomputed
    if not isinstance(record, dict) or record.get("inputs") != inputs or "output" not in record:
        return None
    return record["output"]


class RunLock:
    """An exclusive lock on a run folder: one process works on a run at a time.

    A second process starting the same run gets a clear error instead of both writing
    the same stages. The lock is the kernel's (flock): a killed process releases it.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self.handle = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise DermabenchError(
                f"run {self.path.parent.name} is in progress in {holder}; wait for it, or use --force for a "
                "separate run"
            ) from None
        try:  # who holds it, for the message above; on a full disk this is the first write to fail
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()}")
            handle.flush()
        except OSError:
            with suppress(OSError):  # closing flushes what did not fit again; the descriptor closes anyway
                handle.close()  # releases the lock: a re-run in this process must not find it held
            raise
        self.handle = handle
        return self

    @staticmethod
    def held(run_dir: Path) -> bool:
        """Whether a process holds the lock of `run_dir` now (it is running)."""
        path = Path(run_dir) / ".lock"
        if not path.is_file():
            return False
        with open(path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
        return False

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None
