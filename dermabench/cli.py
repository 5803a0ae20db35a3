"""The `dermabench` command line. User errors print one line naming the bad thing and exit 2."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from dermabench import leaderboard, plugins
from dermabench.config import PROFILES, build_config, parse_options, read_config_file
from dermabench.errors import DermabenchError, storage_error
from dermabench.generation import plugin_call

app = typer.Typer(
    help="Benchmark synthetic skin-lesion images: do they make a classifier better, and how real do they look?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Look at a dataset before running anything.", no_args_is_help=True)
app.add_typer(data_app, name="data")
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
KINDS = {"generators": "generator", "classifiers": "classifier", "datasets": "dataset",
         "extractors": "extractor", "captioners": "captioner"}  # fmt: skip


def user_errors(command):
    """Report DermabenchError, and a disk that refused a write (full, read-only, not permitted), as `error: ...`
    on stderr with exit code 2, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            # finished stages are on disk (atomic writes); say how to get the rest
            err.print("interrupted: finished stages are kept; run the same command again to resume", highlight=False)
            raise typer.Exit(130) from None
        except Exception as exc:
            problem = exc if isinstance(exc, DermabenchError) else storage_error(exc)
            if problem is None:
                raise
            err.print(f"[bold red]error:[/bold red] {escape(str(problem))}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper


@app.command()
@user_errors
def run(
    generator: Annotated[
        list[str],
        typer.Option(help="Generator plugin (see `dermabench list generators`); repeat it to compare several "
                     "generators on the same split, seeds and classifier settings."),
    ] = [],
    classifier: Annotated[Optional[str], typer.Option(help="Classifier plugin.")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Dataset plugin for train pool, validation and test.")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder of the dataset.")] = None,
    test_dataset: Annotated[Optional[str], typer.Option(help="Evaluate on this other dataset instead.")] = None,
    test_data_dir: Annotated[Optional[Path], typer.Option(help="Folder of the test dataset.")] = None,
    extractor: Annotated[Optional[str], typer.Option(help="Feature extractor for FID/KID.")] = None,
    captioner: Annotated[Optional[str], typer.Option(help="Captioner for train-pool images.")] = None,
    profile: Annotated[Optional[str], typer.Option(help=f"Sizes and models: {', '.join(PROFILES)} (default quick).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML run config; flags override it.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Run seed (splits, prompts, classifier seeds start here).")] = None,
    seeds: Annotated[Optional[int], typer.Option(help="K: classifier seeds per arm.")] = None,
    n_real: Annotated[Optional[int], typer.Option(help="Real training images per arm.")] = None,
    n_synthetic: Annotated[Optional[int], typer.Option(help="Synthetic images generated and added.")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Side of the square images every step uses.")] = None,
    arms: Annotated[Optional[str], typer.Option(help="Comma-separated arms, e.g. real,real+synthetic,real+augment.")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:N.")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Results folder (default results/).")] = None,
    generator_opt: Annotated[list[str], typer.Option(help="Generator option key=value (repeatable).")] = [],
    classifier_opt: Annotated[list[str], typer.Option(help="Classifier option key=value (repeatable).")] = [],
    dataset_opt: Annotated[list[str], typer.Option(help="Dataset option key=value (repeatable).")] = [],
    test_dataset_opt: Annotated[list[str], typer.Option(help="Test dataset option key=value (repeatable).")] = [],
    extractor_opt: Annotated[list[str], typer.Option(help="Extractor option key=value (repeatable).")] = [],
    captioner_opt: Annotated[list[str], typer.Option(help="Captioner option key=value (repeatable).")] = [],
    force: Annotated[bool, typer.Option("--force", help="Start a new run beside a finished or running one (an interrupted --force run resumes).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the result.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Step durations and the debug log.")] = False,
) -> None:
    """Run the real-vs-synthetic protocol, print the leaderboard rows and write the HTML report of each run.

    With several `--generator`s, one run per generator: the same split, prompts' seeds, classifier seeds and
    settings, one real test set; the leaderboard ranks them together.
    """
    from dermabench.progress import ConsoleProgress
    from dermabench.protocol import run as run_protocol

    file_settings = read_config_file(config) if config else None
    twice = sorted({name for name in generator if generator.count(name) > 1})
    if twice:
        raise DermabenchError(f"--generator {twice[0]} is given twice; name each generator once")
    every = [build_config(
        file_settings,
        generator=name, classifier=classifier, dataset=dataset,
        data_dir=str(data_dir) if data_dir else None,
        test_dataset=test_dataset, test_data_dir=str(test_data_dir) if test_data_dir else None,
        extractor=extractor, captioner=captioner, profile=profile, seed=seed, seeds=seeds,
        n_real=n_real, n_synthetic=n_synthetic, image_size=image_size, arms=arms, device=device,
        out=str(out_dir) if out_dir else None,
        generator_options=generator_options(generator_opt, name, generator) or None,
        classifier_options=parse_options(classifier_opt, "--classifier-opt") or None,
        dataset_options=parse_options(dataset_opt, "--dataset-opt") or None,
        test_dataset_options=parse_options(test_dataset_opt, "--test-dataset-opt") or None,
        extractor_options=parse_options(extractor_opt, "--extractor-opt") or None,
        captioner_options=parse_options(captioner_opt, "--captioner-opt") or None,
    ) for name in (generator or [None])]  # fmt: skip
    # fail on a misspelt plugin name or a bad option value now, not after minutes (or GPU-hours) of work
    for settings in every:
        for slot in ("generator", "classifier", "dataset", "extractor", "captioner", "test_dataset"):
            name = getattr(settings, slot)
            if name:
                registered = plugins.get("dataset" if slot == "test_dataset" else slot, name)
                if slot in ("generator", "classifier", "extractor", "captioner"):  # cheap: models load later
                    with plugin_call(slot, name, "__init__"):
                        registered.cls(**dict(getattr(settings, f"{slot}_options")))
    results = []
    for settings in every:
        result_path = run_protocol(settings, ConsoleProgress(quiet=quiet, verbose=verbose), force=force)
        results.append(json.loads(result_path.read_text()))
        err.print(f"result: {result_path}", highlight=False)
        report = result_path.parent / "report.html"
        if report.is_file() and report.stat().st_mtime >= result_path.stat().st_mtime:
            err.print(f"report: {report}", highlight=False)  # a finished run's command changes nothing on disk
            continue
        try:  # the result is safe on disk; a report that fails to render must not turn the run into a failure
            from dermabench.report import write_report

            err.print(f"report: {write_report(result_path.parent)}", highlight=False)
        except Exception as exc:
            if storage_error(exc) is not None:
                raise  # a full or read-only disk ends the command; the re-run it asks for writes the report
            err.print(f"warning: report not written ({exc}); try `dermabench report {result_path.parent}`",
                      markup=False)  # fmt: skip
    out.print(leaderboard.render(results, "md"), end="", highlight=False)


def generator_options(pairs: list[str], name: str | None, names: list[str]) -> dict[str, str]:
    """`--generator-opt` for one generator: `key=value` applies to every generator, `NAME.key=value` to NAME's."""
    options = parse_options(pairs, "--generator-opt")
    mine: dict[str, str] = {}
    for key, value in options.items():
        owner, dot, option = key.rpartition(".")
        if not dot:
            mine.setdefault(key, value)
        elif owner not in names:
            raise DermabenchError(f"--generator-opt {key}: '{owner}' is not one of the --generator names {names}")
        elif owner == name:
            mine[option] = value  # the generator's own value wins over a shared one
    return mine


@app.command("plugins")
@user_errors
def list_plugins(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Every loaded plugin: name, version, hooks and what it registers."""
    rows = plugins.describe_plugins()
    if as_json:
        out.print_json(json.dumps(rows))
        return
    for row in rows:
        registers = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in row["registers"].items())
        out.print(f"{row['name']} {row['version']}  ({registers})", highlight=False)


@app.command("list")
@user_errors
def list_kind(kind: Annotated[str, typer.Argument(help=", ".join(KINDS))]) -> None:
    """Names (and one-line descriptions) of the registered plugins of one kind."""
    if kind not in KINDS:
        from dermabench.errors import unknown_name

        raise unknown_name("kind", kind, KINDS)
    for name, registered in sorted(plugins.registered(KINDS[kind]).items()):
        out.print(f"{name:<20} {registered.cls.description}  [dim]({registered.plugin})[/dim]", highlight=False)


@app.command("leaderboard")
@user_errors
def show_leaderboard(
    results_dir: Annotated[Path, typer.Argument(help="Folder of runs (default results/).")] = Path("results"),
    fmt: Annotated[str, typer.Option("--format", help="md, csv, json or latex (booktabs).")] = "md",
    columns: Annotated[Optional[str], typer.Option(help="Comma-separated columns, e.g. generator,fid,auc,delta_auc.")] = None,
) -> None:
    """A leaderboard of every finished run under RESULTS_DIR, rendered from the result JSON alone."""
    from dermabench.results import load_results

    if fmt not in leaderboard.FORMATS:
        from dermabench.errors import unknown_name

        raise unknown_name("format", fmt, leaderboard.FORMATS)
    results = [result for _, result in load_results(results_dir)]
    sys.stdout.write(leaderboard.render(results, fmt, columns))


@app.command("report")
@user_errors
def report(
    path: Annotated[Path, typer.Argument(help="A run folder (holding result.json) or a folder of runs.")],
    out_path: Annotated[Optional[Path], typer.Option("--out", help="HTML file (default PATH/report.html).")] = None,
) -> None:
    """Write one self-contained HTML report (images embedded, no network) of a run or a folder of runs."""
    from dermabench.report import write_report

    out.print(f"wrote {write_report(path, out_path)}", highlight=False)


@app.command("sweep")
@user_errors
def sweep(
    config: Annotated[Path, typer.Option("--config", help="Sweep TOML: run settings plus a [grid] of lists.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the cells and which are finished; run nothing.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the leaderboard.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Step durations and the debug log.")] = False,
) -> None:
    """Run a grid of runs (generator × classifier × n_real × n_synthetic × seed), skipping finished cells."""
    from dermabench.progress import ConsoleProgress
    from dermabench.sweep import run_sweep

    result = run_sweep(config, ConsoleProgress(quiet=quiet, verbose=verbose), dry_run=dry_run)
    for cell in result.cells:
        error = f": {cell.error}" if cell.error else ""
        err.print(f"{cell.status:<9} {cell.run_id}  ({cell.label()}){error}", highlight=False, markup=False)
    if result.files.get("leaderboard.md"):
        out.print(result.files["leaderboard.md"].read_text(), end="", highlight=False, markup=False)
    for name, file in result.files.items():
        err.print(f"{name}: {file}", highlight=False, markup=False)
    if result.count("failed"):
        err.print(f"[bold red]error:[/bold red] {result.count('failed')} of {len(result.cells)} cells failed", highlight=False)
        raise typer.Exit(1)


@app.command("fid")
@user_errors
def fid(
    dir_a: Annotated[Path, typer.Argument(metavar="DIR_A", help="Reference (real) images, searched at any depth.")],
    dir_b: Annotated[Path, typer.Argument(metavar="DIR_B", help="Images to judge (generated), searched at any depth.")],
    extractor: Annotated[Optional[str], typer.Option(help="Feature extractor (default efficientnet-lite0).")] = None,
    extractor_opt: Annotated[list[str], typer.Option(help="Extractor option key=value (repeatable).")] = [],
    image_size: Annotated[Optional[int], typer.Option(help="Side images are cropped and resized to (default 64).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines on stderr.")] = False,
) -> None:
    """FID, KID, precision and recall between two folders of images (B judged against A)."""
    from dermabench.fid_command import fid_between_folders, format_numbers, to_json
    from dermabench.progress import ConsoleProgress

    options = parse_options(extractor_opt, "--extractor-opt")
    numbers = fid_between_folders(dir_a, dir_b, extractor, options, image_size, device, ConsoleProgress(quiet=quiet))
    sys.stdout.write((to_json(numbers) if as_json else format_numbers(numbers)) + "\n")


@data_app.command("preview")
@user_errors
def preview(
    dataset: Annotated[str, typer.Argument(help="Dataset plugin.")],
    out_path: Annotated[Path, typer.Option("--out", help="PNG to write.")] = Path("preview.png"),
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder of the dataset.")] = None,
    per_class: Annotated[int, typer.Option(help="Images per class.", min=1)] = 8,
    image_size: Annotated[int, typer.Option(help="Side of each image.", min=16)] = 96,
    dataset_opt: Annotated[list[str], typer.Option(help="Dataset option key=value (repeatable).")] = [],
) -> None:
    """Save a grid of example images per class."""
    from dermabench.api import LABEL_NAMES
    from dermabench.grids import save_grid
    from dermabench.images import to_square_rgb

    if out_path.suffix.lower() != ".png":
        raise DermabenchError(f"--out {out_path}: the preview is a PNG; name it *.png")
    cls = plugins.get("dataset", dataset).cls
    options = parse_options(dataset_opt, "--dataset-opt")
    chosen: dict[int, list] = {0: [], 1: []}
    for sample in cls(data_dir=str(data_dir) if data_dir else None, **options).samples():
        if sample.label in chosen and len(chosen[sample.label]) < per_class:
            chosen[sample.label].append(to_square_rgb(sample.image, image_size)[0])
        if all(len(images) >= per_class for images in chosen.values()):
            break
    rows = [(LABEL_NAMES[label], images) for label, images in chosen.items()]
    path = save_grid(rows, out_path, cell=image_size, title=f"{dataset}: benign (top) and malignant (bottom)")
    out.print(f"wrote {path}", highlight=False)


@data_app.command("check")
@user_errors
def check(
    dataset: Annotated[str, typer.Option(help="Dataset plugin.")],
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder of the dataset.")] = None,
    dataset_opt: Annotated[list[str], typer.Option(help="Dataset option key=value (repeatable).")] = [],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Load and validate every image; report counts, lesions, diagnoses and what was rejected."""
    from dermabench.data_check import check as check_dataset
    from dermabench.data_check import format_report

    report = check_dataset(dataset, str(data_dir) if data_dir else None, parse_options(dataset_opt, "--dataset-opt"))
    if as_json:
        out.print_json(json.dumps(report, default=str))
    else:
        out.print(format_report(report), highlight=False, markup=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
