"""A full, read-only or forbidden disk: one clear line, a non-zero exit, nothing finished damaged, and the same
command run again resumes.

The faults are injected (root ignores chmod, and no test fills a real disk): `FullDisk` lets the chosen files
take a few bytes and then fails their writes with ENOSPC, as the kernel does; `refuse` makes the OS refuse
every create or write under a folder with EACCES, EROFS, ...; reading keeps working in both.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Self

import numpy as np
import pytest
import torch
from dermabench_plugins.image_classifier import _load_checkpoint, _save_checkpoint
from PIL import Image
from test_resume import comparable
from typer.testing import CliRunner

from in_test_plugins import registered_plugin

import dermabench
from dermabench.cli import app
from dermabench.config import build_config
from dermabench.errors import StorageError, storage_error
from dermabench.image_cache import ImageCache
from dermabench.protocol import Run, run
from dermabench.sweep import run_sweep

KEPT = "then re-run the same command; finished stages are kept"
#: tiny settings: a run takes seconds with the in-test extractor and classifier below
#: (the option as the command line gives it, so that `config` and `cli` make the same run)
# augment: a generator without a fit keeps each run to seconds (the default, dermaflux, trains first)
FLAGS = {"profile": "smoke", "generator": "augment", "extractor": "colour-stats", "classifier": "colour-mean", "n_real": 40,
         "n_synthetic": 40, "image_size": 24, "dataset_options": {"n": "120"}}  # fmt: skip


# --------------------------------------------------------------------------- in-test plugins (fast)


class ColourStats(dermabench.FeatureExtractor):
    """Per-channel mean, spread and quantiles of the pixels: 15 numbers per image."""

    name = "colour-stats"

    def extract(self, images, context):
        pixels = np.stack([np.asarray(image, np.float32).reshape(-1, 3) / 255 for image in images])
        quantiles = np.quantile(pixels, [0.1, 0.5, 0.9], axis=1).transpose(1, 0, 2).reshape(len(images), -1)
        return np.concatenate([pixels.mean(1), pixels.std(1), quantiles], axis=1)


class ColourMean(dermabench.Classifier):
    """Nearest class mean colour; keeps its 'weights' in its work_dir, as a plugin that caches its fit does."""

    name = "colour-mean"

    def fit(self, train, val, context):
        colours = np.stack([np.asarray(s.image, np.float64).mean((0, 1)) for s in train])
        labels = np.array([s.label for s in train])
        self.means = np.stack([colours[labels == label].mean(0) for label in (0, 1)])
        with open(Path(context.work_dir) / "weights.npy", "wb") as handle:
            np.save(handle, self.means)

    def predict_proba(self, images, context):
        colours = np.stack([np.asarray(image, np.float64).mean((0, 1)) for image in images])
        distance = np.linalg.norm(colours[:, None, :] - self.means[None], axis=2)
        return 1 / (1 + np.exp((distance[:, 1] - distance[:, 0]) / 10))


class InTestPlugins:
    @dermabench.hookimpl
    def register_extractors(self, register):
        register(ColourStats)

    @dermabench.hookimpl
    def register_classifiers(self, register):
        register(ColourMean)


@pytest.fixture(scope="module", autouse=True)
def in_test_plugins():
    with registered_plugin(InTestPlugins(), "disk-errors-test"):
        yield


# --------------------------------------------------------------------------- faults


class _Filling:
    """A file handle on a disk with `disk.free` bytes left: what does not fit is cut off, then ENOSPC."""

    def __init__(self, handle, disk: FullDisk, path: str) -> None:
        self._handle, self._disk, self._path = handle, disk, path

    def write(self, data) -> int:
        data = bytes(data)
        room = max(self._disk.free, 0)
        self._disk.free -= len(data)
        if len(data) > room:
            self._handle.write(data[:room])  # half a file, as a real full disk leaves it
            self._handle.flush()
            self._disk.refused.append(self._path)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # write(2) names no file
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self._handle.close()


class FullDisk:
    """Files under `folder` whose path contains `where` share `free` bytes, then their writes fail with ENOSPC."""

    def __init__(self, monkeypatch, folder: Path, where: str, free: int = 0) -> None:
        self.folder, self.where, self.free = os.path.abspath(folder), where, free
        self.refused: list[str] = []
        real_open, real_fdopen, real_mkstemp = builtins.open, os.fdopen, tempfile.mkstemp
        temp_paths: dict[int, str] = {}

        def mkstemp(*args, **kwargs):
            fd, path = real_mkstemp(*args, **kwargs)
            temp_paths[fd] = path
            return fd, path

        def fdopen(fd, *args, **kwargs):
            return self._wrap(real_fdopen(fd, *args, **kwargs), temp_paths.pop(fd, ""))

        def open_(file, mode="r", *args, **kwargs):
            handle = real_open(file, mode, *args, **kwargs)
            writing = not isinstance(file, int) and bool(set(mode) & set("wax+"))
            return self._wrap(handle, os.fspath(file)) if writing else handle

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
        monkeypatch.setattr(os, "fdopen", fdopen)
        monkeypatch.setattr(builtins, "open", open_)
        monkeypatch.setattr(io, "open", open_)

    def _wrap(self, handle, path: str):
        path = os.path.abspath(path) if path else ""
        return _Filling(handle, self, path) if path.startswith(self.folder) and self.where in path else handle


def refuse(monkeypatch, folder: Path, code: int) -> None:
    """The OS refuses to create or write anything under `folder` with `code`; reading still works."""
    folder = os.path.abspath(folder)
    real_os_open, real_open, real_mkdir = os.open, builtins.open, os.mkdir

    def inside(path) -> bool:
        path = os.path.abspath(os.fspath(path))
        return path == folder or path.startswith(folder + os.sep)

    def fail(path):
        raise OSError(code, os.strerror(code), os.fspath(path))

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            fail(path)
        return real_os_open(path, flags, *args, **kwargs)

    def open_(file, mode="r", *args, **kwargs):
        if not isinstance(file, int) and set(mode) & set("wax+") and inside(file):
            fail(file)
        return real_open(file, mode, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        if inside(path) and not os.path.isdir(path):  # an existing folder is EEXIST first, as on Linux
            fail(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)
    monkeypatch.setattr(os, "mkdir", mkdir)


# --------------------------------------------------------------------------- helpers


def config(out: Path, **flags):
    return build_config(out=str(out), **{**FLAGS, **flags})


def cli(out: Path, *flags: str):
    """`dermabench run` with the tiny settings, in-process; returns the CliRunner result."""
    args = ["run", "--profile", "smoke", "--generator", "augment", "--out", str(out), "--quiet",
            "--extractor", "colour-stats",
            "--classifier", "colour-mean", "--n-real", "40", "--n-synthetic", "40", "--image-size", "24",
            "--dataset-opt", "n=120", *flags]  # fmt: skip
    return CliRunner().invoke(app, args)


def error_line(result, *before: str) -> str:
    """The one error line a failed command printed, after checking it failed cleanly: exit 2, no traceback,
    and nothing else on stderr but lines starting with `before`."""
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Traceback" not in result.output
    *lines, last = result.stderr.strip().splitlines()
    assert len(lines) == len(before) and all(line.startswith(start) for line, start in zip(lines, before)), lines
    return last


def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def assert_nothing_half_written(out: Path) -> None:
    """No temp file left behind, and every file a reader would trust reads back whole."""
    assert not [path for path in out.rglob("*") if ".tmp" in path.name]
    for path in out.rglob("*.json"):
        json.loads(path.read_text())
    for path in out.glob(".cache/*/*.npy"):
        np.load(path, allow_pickle=False)
    for path in out.glob(".cache/*/*.npz"):
        with np.load(path, allow_pickle=False) as stored:
            [stored[key] for key in stored.files]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """An uninterrupted run with the tiny settings (seed 0)."""
    return json.loads(run(config(tmp_path_factory.mktemp("reference"))).read_text())


@pytest.fixture(scope="module")
def earlier(tmp_path_factory) -> Path:
    """A results folder holding a finished run (seed 1) and its caches."""
    out = tmp_path_factory.mktemp("earlier") / "results"
    run(config(out, seed=1))
    return out


@pytest.fixture
def out(earlier, tmp_path) -> Path:
    """A copy of the folder with the earlier finished run, for a test to write a second run into."""
    return Path(shutil.copytree(earlier, tmp_path / "results"))


# --------------------------------------------------------------------------- the message


@pytest.mark.parametrize(
    ("exc", "path", "message"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "r/x.json",
         f"no space left on device while writing r/x.json: free space, {KEPT}"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "r/x.json",
         f"disk quota exceeded while writing r/x.json: free space or raise the quota, {KEPT}"),
        (OSError(errno.EROFS, "Read-only file system", "r/run"), None,
         f"read-only file system while writing r/run: make it writable, {KEPT}"),
        (PermissionError(errno.EACCES, "Permission denied", "data/a.png"), None,
         f"permission denied on data/a.png: fix its permissions, {KEPT}"),
        (PermissionError(errno.EPERM, "Operation not permitted"), "r/x.json",
         f"operation not permitted while writing r/x.json: fix its permissions, {KEPT}"),
        # safetensors (Rust) names its own temp file: the folder is what the user needs
        (RuntimeError('Error while serializing: I/O error: No space left on device (os error 28) at path '
                      '"w/ckpt/.tmpAb12"'), None, f"no space left on device while writing w/ckpt: free space, {KEPT}"),
        (RuntimeError("[Errno 122] Disk quota exceeded"), None, f"disk quota exceeded: free space or raise the quota, {KEPT}"),
    ],
)  # fmt: skip
def test_a_refused_write_is_one_line_naming_the_file_and_what_to_do(exc, path, message):
    assert str(storage_error(exc, path)) == message


def test_other_errors_are_not_storage_errors():
    assert storage_error(OSError(errno.EIO, "Input/output error")) is None
    assert storage_error(OSError("disk gone")) is None  # no errno: a plugin's own words
    assert storage_error(RuntimeError("PermissionError: token has no access to the repo")) is None
    assert storage_error(ValueError("bad")) is None


def test_permission_denied_creating_a_folder_names_the_folder_that_refused(tmp_path):
    exc = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "new"))
    assert str(storage_error(exc)) == f"permission denied on {tmp_path} (creating new): fix its permissions, {KEPT}"


# --------------------------------------------------------------------------- runs


def test_a_full_disk_while_writing_the_result_keeps_the_earlier_run_and_the_rerun_finishes(out, reference, monkeypatch):
    before = snapshot(out)
    run_dir = out / Run(config(out)).run_id
    disk = FullDisk(monkeypatch, out, "result.json", free=100)
    line = error_line(cli(out))
    assert line == f"error: no space left on device while writing {run_dir / 'result.json'}: free space, {KEPT}"
    assert len(disk.refused) == 1 and ".result.json." in disk.refused[0]
    after = snapshot(out)
    assert {name: after.get(name) for name in before} == before  # the earlier run, byte for byte
    assert_nothing_half_written(out)
    assert {path.stem for path in (run_dir / "stages").glob("*.json")} >= {"captions", "fidelity", "arm-real-seed0"}

    monkeypatch.undo()
    again = cli(out)
    assert again.exit_code == 0, (again.output, again.exception)
    resumed = json.loads((run_dir / "result.json").read_text())
    assert "fidelity" in resumed["resumed_stages"] and resumed["timings_s"]["generate"] == 0.0
    assert comparable(resumed) == comparable(reference)
    assert {name: snapshot(out)[name] for name in before} == before


@pytest.mark.parametrize(
    ("where", "file"),
    [
        ("/.cache/features/", r"\.cache/features/colour-stats-[0-9a-f]{24}\.npy"),
        ("/.cache/generated/", r"\.cache/generated/augment-[0-9a-f]{24}\.shard0000-of-0001\.npz"),
    ],
)
def test_a_full_disk_in_a_cache_ends_the_run_and_the_same_command_resumes(where, file, out, reference, monkeypatch):
    before = snapshot(out)
    FullDisk(monkeypatch, out, where, free=1000)
    line = error_line(cli(out))
    assert re.fullmatch(rf"error: no space left on device while writing {re.escape(str(out))}/{file}: "
                        rf"free space, {re.escape(KEPT)}", line), line  # fmt: skip
    assert_nothing_half_written(out)
    assert {name: snapshot(out).get(name) for name in before} == before

    monkeypatch.undo()
    again = cli(out)
    assert again.exit_code == 0, (again.output, again.exception)
    resumed = json.loads((out / Run(config(out)).run_id / "result.json").read_text())
    assert {"near_duplicates", "captions"} <= set(resumed["resumed_stages"])  # finished before the fault
    assert comparable(resumed) == comparable(reference)


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (errno.EACCES, "permission denied on {out} (creating {run_id}): fix its permissions"),
        (errno.EPERM, "operation not permitted on {out} (creating {run_id}): fix its permissions"),
        (errno.EROFS, "read-only file system while writing {out}/{run_id}: make it writable"),
    ],
)
def test_an_output_folder_that_refuses_writes_is_named(code, message, out, monkeypatch):
    before = snapshot(out)
    run_id = Run(config(out)).run_id
    refuse(monkeypatch, out, code)
    line = error_line(cli(out))
    assert line == f"error: {message.format(out=out, run_id=run_id)}, {KEPT}"
    monkeypatch.undo()
    assert snapshot(out) == before  # nothing written, nothing damaged


def test_a_plugin_whose_write_finds_the_disk_full_is_not_blamed(out, reference, monkeypatch):
    before = snapshot(out)
    FullDisk(monkeypatch, out, "/.cache/plugins/classifier-")
    line = error_line(cli(out))
    # write(2) names no file and the plugin's handle is its own: the line names who was writing
    assert line == f"error: no space left on device while classifier 'colour-mean' ran fit(): free space, {KEPT}"
    assert {name: snapshot(out).get(name) for name in before} == before
    monkeypatch.undo()
    again = cli(out)
    assert again.exit_code == 0, (again.output, again.exception)
    resumed = json.loads((out / Run(config(out)).run_id / "result.json").read_text())
    assert "fidelity" in resumed["resumed_stages"] and comparable(resumed) == comparable(reference)


def test_a_full_disk_while_writing_the_report_fails_the_command_and_the_rerun_writes_it(out, monkeypatch):
    report = out / Run(config(out)).run_id / "report.html"
    FullDisk(monkeypatch, out, "report.html")
    line = error_line(cli(out), f"result: {report.parent / 'result.json'}")
    assert (report.parent / "result.json").is_file() and not report.exists()
    assert line == f"error: no space left on device while writing {report}: free space, {KEPT}"
    monkeypatch.undo()
    again = cli(out)
    assert again.exit_code == 0, (again.output, again.exception)
    assert report.read_text().startswith("<!DOCTYPE html>")


# --------------------------------------------------------------------------- writers, one by one


def test_the_image_cache_leaves_no_half_pack_on_a_full_disk(tmp_path, monkeypatch):
    cache = ImageCache(tmp_path, 8)
    cache.put("d1", Image.new("RGB", (8, 8), (9, 8, 7)), "RGB")
    FullDisk(monkeypatch, tmp_path, "pack-", free=64)
    with pytest.raises(StorageError, match=rf"^no space left on device while writing {tmp_path}/8px/pack-\w+\.npy: "):
        cache.flush()
    assert [path.name for path in (tmp_path / "8px").iterdir()] == []
    monkeypatch.undo()
    cache.flush()  # what it had is still there to write
    cached = ImageCache(tmp_path, 8).get("d1")
    assert cached is not None and cached.image.getpixel((0, 0)) == (9, 8, 7)


def test_a_classifier_checkpoint_is_kept_whole_on_a_full_disk(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    _save_checkpoint(path, {"fingerprint": "f", "step": torch.tensor(1)})
    before = path.read_bytes()
    FullDisk(monkeypatch, tmp_path, "checkpoint.pt", free=200)
    with pytest.raises(StorageError, match=f"^no space left on device while writing {path}: "):
        _save_checkpoint(path, {"fingerprint": "f", "step": torch.tensor(2), "weights": torch.zeros(1000)})
    monkeypatch.undo()
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    assert int(_load_checkpoint(path, lambda: "f")["step"]) == 1


def test_a_sweep_stops_at_a_full_disk_instead_of_failing_every_cell(tmp_path):
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(f'profile = "smoke"\nout = "{tmp_path / "out"}"\n[grid]\nseed = [0, 1, 2]\n')
    calls = []

    def runner(config, progress):
        calls.append(config.seed)
        raise StorageError(f"no space left on device while writing x: free space, {KEPT}")

    with pytest.raises(StorageError, match="^no space left on device"):
        run_sweep(sweep, runner=runner)
    assert calls == [0]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_get_the_permissions_a_plain_open_would(tmp_path, umask, mode):
    """mkstemp makes its temp file 0600; results shared on a cluster must follow the user's umask instead."""
    from dermabench.results import write_json_atomic

    old = os.umask(umask)
    try:
        written = write_json_atomic(tmp_path / "result.json", {"auc": 0.8})
        (tmp_path / "plain.json").write_text("{}")
    finally:
        os.umask(old)
    assert written.stat().st_mode & 0o777 == mode == (tmp_path / "plain.json").stat().st_mode & 0o777
