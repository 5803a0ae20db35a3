"""The `dermabench` command line. User errors print one line naming the bad thing and exit 2."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from dermabench import leaderboard, plugins
from dermabench.config import PROFILES, build_config, parse_options, read_config_file
from dermabench.errors import DermabenchError

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
    """Report DermabenchError as `error: ...` on stderr with exit code 2, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except DermabenchError as exc:
            err.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper


@app.command()
@user_errors
def run(
    generator: Annotated[Optional[str], typer.Option(help="Generator plugin (see `dermabench list generators`).")] = None,
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
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the result.")] = False,
) -> None:
    """Run the real-vs-synthetic protocol and print the run's leaderboard row."""
    from dermabench.progress import ConsoleProgress
    from dermabench.protocol import run as run_protocol

    settings = build_config(
        read_config_file(config) if config else None,
        generator=generator, classifier=classifier, dataset=dataset,
        data_dir=str(data_dir) if data_dir else None,
        test_dataset=test_dataset, test_data_dir=str(test_data_dir) if test_data_dir else None,
        extractor=extractor, captioner=captioner, profile=profile, seed=seed, seeds=seeds,
        n_real=n_real, n_synthetic=n_synthetic, image_size=image_size, arms=arms, device=device,
        out=str(out_dir) if out_dir else None,
        generator_options=parse_options(generator_opt, "--generator-opt") or None,
        classifier_options=parse_options(classifier_opt, "--classifier-opt") or None,
        dataset_options=parse_options(dataset_opt, "--dataset-opt") or None,
        test_dataset_options=parse_options(test_dataset_opt, "--test-dataset-opt") or None,
        extractor_options=parse_options(extractor_opt, "--extractor-opt") or None,
        captioner_options=parse_options(captioner_opt, "--captioner-opt") or None,
    )  # fmt: skip
    # fail on a misspelt plugin name now, not after minutes of work
    for slot in ("generator", "classifier", "dataset", "extractor", "captioner", "test_dataset"):
        name = getattr(settings, slot)
        if name:
            plugins.get("dataset" if slot == "test_dataset" else slot, name)
    result_path = run_protocol(settings, ConsoleProgress(quiet=quiet))
    result = json.loads(result_path.read_text())
    out.print(leaderboard.render([result], "md"), end="", highlight=False)
    err.print(f"result: {result_path}", highlight=False)


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
    fmt: Annotated[str, typer.Option("--format", help="md, csv or json.")] = "md",
) -> None:
    """A leaderboard of every finished run under RESULTS_DIR, rendered from the result JSON alone."""
    from dermabench.results import load_results

    if fmt not in leaderboard.FORMATS:
        from dermabench.errors import unknown_name

        raise unknown_name("format", fmt, leaderboard.FORMATS)
    results = [result for _, result in load_results(results_dir)]
    sys.stdout.write(leaderboard.render(results, fmt))


@data_app.command("preview")
@user_errors
def preview(
    dataset: Annotated[str, typer.Argument(help="Dataset plugin.")],
    out_path: Annotated[Path, typer.Option("--out", help="PNG to write.")] = Path("preview.png"),
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder of the dataset.")] = None,
    per_class: Annotated[int, typer.Option(help="Images per class.")] = 8,
    image_size: Annotated[int, typer.Option(help="Side of each image.")] = 96,
    dataset_opt: Annotated[list[str], typer.Option(help="Dataset option key=value (repeatable).")] = [],
) -> None:
    """Save a grid of example images per class."""
    from dermabench.api import LABEL_NAMES
    from dermabench.grids import save_grid
    from dermabench.images import to_square_rgb

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
