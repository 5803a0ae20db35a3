"""`dermabench sweep --config sweep.toml`: a grid of runs, each through the same protocol as `dermabench run`.

A sweep file is a run config file (the same keys, applied to every cell) plus two tables:

```toml
profile = "quick"                 # fixed settings: any `dermabench run` config key
dataset = "phantom"
out = "results/quick_phantom"     # where the runs, the leaderboard and the plot go

[grid]                            # one run per combination, in this order
generator = ["augment", "dermaflux"]
classifier = ["cnn"]
n_real = [500]
n_synthetic = [250, 500, 875]
seed = [0, 1]

[options.dermaflux]               # options for a plugin, in every cell that uses it
train_steps = 1000
```

A cell whose run already finished (its `<out>/<run_id>/result.json` exists; run_id is the
protocol's, from the run config's fingerprint) is skipped, so an interrupted sweep resumes where it
stopped. A failing cell is reported and the sweep goes on; a full or read-only disk stops it (every
later cell would fail the same way). At the end the sweep writes the leaderboard of its cells
(`leaderboard.md`, `.csv`, `.json`, `.tex`) and the HTML report with the accuracy/AUC-vs-n_synthetic
plot (`synthetic_ratio.png`) into the out folder.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermabench import leaderboard, plugins
from dermabench.api import Progress
from dermabench.config import OPTION_TABLES, RunConfig, build_config
from dermabench.errors import DermabenchError, StorageError, unknown_name
from dermabench.generation import plugin_call
from dermabench.results import RESULT_FILE, validate_result

__all__ = ["Cell", "SweepResult", "load_sweep", "run_sweep"]

_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))
#: what a grid may vary (the issue's five, plus the other per-run scalars)
GRID_KEYS = tuple(name for name in _FIELDS if name not in OPTION_TABLES and name != "out")
SWEEP_TABLES = ("grid", "options")
LEADERBOARD_FILES = {"md": "leaderboard.md", "csv": "leaderboard.csv", "json": "leaderboard.json",
                     "latex": "leaderboard.tex"}  # fmt: skip


@dataclass
class Cell:
    """One grid point: its values, its run config and the run_id the protocol will give it."""

    values: dict[str, Any]
    config: RunConfig
    run_id: str
    status: str = "pending"  # pending | finished (found on disk) | ran | failed
    error: str | None = None

    @property
    def result_path(self) -> Path:
        return Path(self.config.out) / self.run_id / RESULT_FILE

    def label(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.values.items()) or "(single cell)"


@dataclass
class SweepResult:
    cells: list[Cell]
    out: Path
    files: dict[str, Path] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(1 for cell in self.cells if cell.status == status)


def run_id_of(config: RunConfig) -> str:
    """The run_id `dermabench run` gives this config (the protocol computes it; we ask the same code)."""
    from dermabench.protocol import Run

    return Run(config).run_id


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DermabenchError(f"sweep config not found: {path}")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DermabenchError(f"{path}: not valid TOML: {exc}") from exc


def load_sweep(path: str | Path) -> tuple[list[Cell], Path]:
    """Read and validate a sweep file; every cell's config is built (and plugin names checked) before any runs."""
    path = Path(path)
    data = _read_toml(path)
    for key in data:
        if key not in _FIELDS and key not in SWEEP_TABLES:
            raise unknown_name(f"key in {path}", key, [*_FIELDS, *SWEEP_TABLES])
    grid = data.pop("grid", {})
    options = data.pop("options", {})
    if not isinstance(grid, Mapping):
        raise DermabenchError(f"{path}: 'grid' must be a table ([grid]) of lists")
    if not isinstance(options, Mapping) or not all(isinstance(v, Mapping) for v in options.values()):
        raise DermabenchError(f"{path}: 'options' must hold one table per plugin, e.g. [options.dermaflux]")
    for key, values in grid.items():
        if key not in GRID_KEYS:
            raise unknown_name(f"grid key in {path}", key, GRID_KEYS)
        if not isinstance(values, list) or not values:
            raise DermabenchError(f"{path}: 'grid.{key}' must be a non-empty list, got {values!r}")
        if key in data:
            raise DermabenchError(f"{path}: '{key}' is both a fixed setting and 'grid.{key}'; keep one")
    out = Path(data.get("out") or Path("results") / "sweeps" / path.stem)
    data["out"] = str(out)

    cells: list[Cell] = []
    seen: set[str] = set()
    used: set[str] = set()  # plugin names some cell uses
    for combination in itertools.product(*grid.values()):
        values = dict(zip(grid, combination))
        settings = {**data, **values}
        for table, slot in OPTION_TABLES.items():
            name = settings.get(slot, getattr(RunConfig, slot, None))
            if name in options:
                settings[table] = {**dict(settings.get(table) or {}), **options[name]}
        try:
            config = build_config(settings)
        except DermabenchError as exc:
            where = f" (cell {', '.join(f'{k}={v!r}' for k, v in values.items())})" if values else ""
            raise DermabenchError(f"{path}{where}: {exc}") from None
        for slot in ("generator", "classifier", "dataset", "extractor", "captioner", "test_dataset"):
            name = getattr(config, slot)
            if name:
                used.add(name)
                try:
                    registered = plugins.get("dataset" if slot == "test_dataset" else slot, name)
                    if slot in ("generator", "classifier", "extractor", "captioner"):  # cheap: models load later
                        # a bad option fails now, not when its cell comes up after hours of other cells
                        with plugin_call(slot, name, "__init__"):
                            registered.cls(**dict(getattr(config, f"{slot}_options")))
                except DermabenchError as exc:
                    key = f"grid.{slot}" if slot in grid else slot
                    raise DermabenchError(f"{path}: '{key}': {exc}") from None
        run_id = run_id_of(config)
        if run_id in seen:  # the same run twice (e.g. a repeated grid value): run it once
            continue
        seen.add(run_id)
        cells.append(Cell(values, config, run_id))
    unused = sorted(set(options) - used)
    if unused:  # a misspelt plugin name would otherwise leave its options silently unapplied
        raise unknown_name(f"plugin in {path} [options.{unused[0]}] (no cell uses it)", unused[0], sorted(used))
    return cells, out


def _finished(cell: Cell) -> bool:
    try:
        validate_result(json.loads(cell.result_path.read_text()))
    except (OSError, ValueError):
        return False
    return True


def run_sweep(
    path: str | Path,
    progress: Progress | None = None,
    runner: Callable[[RunConfig, Progress], Path] | None = None,
    dry_run: bool = False,
) -> SweepResult:
    """Run every unfinished cell of the sweep at `path`, then write its leaderboard and report.

    runner: the function that runs one config (default: the protocol's `run`, as `dermabench run` uses).
    dry_run: only mark which cells are finished; run and write nothing.
    """
    progress = progress or Progress()
    if runner is None:
        from dermabench.protocol import run as runner
    cells, out = load_sweep(path)
    for cell in cells:
        if _finished(cell):
            cell.status = "finished"
    sweep = SweepResult(cells, out)
    todo = [cell for cell in cells if cell.status == "pending"]
    progress.log(f"sweep {path}: {len(cells)} cells, {len(cells) - len(todo)} already finished, {len(todo)} to run")
    if dry_run:
        return sweep
    for i, cell in enumerate(todo, 1):
        progress.log(f"cell {i}/{len(todo)}: {cell.label()} -> {cell.run_id}")
        try:
            runner(cell.config, progress)
        except StorageError:  # a full or read-only disk fails every later cell too: stop, finished cells are kept
            raise
        except DermabenchError as exc:  # a plugin failed or the data is unusable: keep going, report at the end
            cell.status, cell.error = "failed", str(exc)
            progress.log(f"cell {i}/{len(todo)} failed: {exc}")
            continue
        cell.status = "ran"
    sweep.files = write_outputs(sweep)
    return sweep


def write_outputs(sweep: SweepResult) -> dict[str, Path]:
    """The leaderboard (every format) and the HTML report of the sweep's finished cells, in its out folder."""
    from dermabench.plots import varies_n_synthetic, write_readable
    from dermabench.report import write_report

    found = []
    for cell in sweep.cells:
        if cell.status in ("finished", "ran"):
            try:
                result = json.loads(cell.result_path.read_text())
                validate_result(result)
            except (OSError, ValueError):
                continue
            found.append((cell.result_path, result))
    if not found:
        return {}
    results = [result for _, result in found]
    files = {}
    for fmt, name in LEADERBOARD_FILES.items():
        files[name] = write_readable(leaderboard.render(results, fmt).encode("utf-8"), sweep.out / name)
    files["report.html"] = write_report(sweep.out, found=found)
    if len(found) > 1 and varies_n_synthetic(results):
        files["synthetic_ratio.png"] = sweep.out / "synthetic_ratio.png"  # written with the report
    return files
