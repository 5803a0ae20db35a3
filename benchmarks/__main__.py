"""`python -m benchmarks`: every benchmark, one table — results/benchmarks.md and results/benchmarks.json.

    python -m benchmarks                      # all groups (≈ 35 min on 2 idle cores)
    python -m benchmarks --only overhead      # one group: overhead, speed-switches, end-to-end, scaling,
                                              # data-loading, gpu (CUDA: tiny and full-size models on the GPU)
    python -m benchmarks --smoke --out /tmp/b # seconds: tiny sizes, one repeat, no end-to-end runs (CI)

Each timed figure is the median of `--repeats` runs (min–max beside it); the two
sides of an overhead ratio are timed alternately in the same process. End-to-end
and scaling runs are whole `dermabench run` processes, timed once each. Run it on
an otherwise idle machine: the table records the load average at the start.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks import (  # noqa: E402
    classifier_overhead,
    data_loading,
    end_to_end,
    fid_overhead,
    full_size,
    generation_overhead,
    speed_switches,
)
from benchmarks.measure import Figure, machine  # noqa: E402
from dermabench.results import write_bytes_atomic, write_json_atomic  # noqa: E402

GROUPS = ("overhead", "speed-switches", "end-to-end", "scaling", "data-loading", "gpu")


def collect(groups: tuple[str, ...], smoke: bool, repeats: int, log: Path) -> Iterator[list[Figure]]:
    """The figures of each group in turn, so that the caller can save what is done before the next group."""
    if "overhead" in groups:
        yield (generation_overhead.run(n_images=4 if smoke else 64, repeats=repeats)
               + fid_overhead.run(n_images=8 if smoke else 128, repeats=repeats)
               + classifier_overhead.run(n_train=64 if smoke else 1024, n_val=32 if smoke else 256,
                                         repeats=repeats, epoch_size=64 if smoke else 512))
    if "speed-switches" in groups:
        yield speed_switches.run(repeats, smoke)
    if "end-to-end" in groups and not smoke:
        yield end_to_end.first_and_rerun([], "quick", log)
    if "scaling" in groups and not smoke:
        yield end_to_end.scaling([], (1, 2, 4), log)
    if "data-loading" in groups:
        # a ratio of two noisy times that costs ≈ 10 s a pair: five pairs at least
        yield data_loading.run(repeats=repeats if smoke else max(repeats, 5), n_phantom=24 if smoke else 400,
                               use_ham10000=not smoke)
    if "gpu" in groups:
        # the tiny models and classifiers on the GPU, then the full-size generators with random weights
        yield generation_overhead.run(n_images=8 if smoke else 64, repeats=repeats, device="cuda", group="gpu")
        yield classifier_overhead.run(n_train=64 if smoke else 512, n_val=32 if smoke else 128, repeats=repeats,
                                      image_size=224, epoch_size=64 if smoke else 1024, device="cuda", group="gpu",
                                      options={"vit": {"variant": "vit_base_patch16_224", "pretrained": False},
                                               "efficientnet": {"pretrained": False}})
        yield from full_size.run("cuda", small=smoke, repeats=min(repeats, 2))


def _number(value: float) -> str:
    if value == 0 or 0.01 <= abs(value) < 10_000:
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return f"{value:.3g}"


def markdown(figures: list[Figure], about: dict, command: str, seconds: float) -> str:
    lines = [
        "# dermabench benchmarks",
        "",
        f"`{command}` — {about['date']}, {seconds / 60:.1f} min, commit `{about['git_commit']}`.",
        "",
        f"Machine: {about['cpu']}, {about['cores']} cores ({about['torch_threads']} torch threads), "
        f"{about['memory_gib']} GiB, GPU: {about['gpu'] or 'none'}; Python {about['python']}, torch {about['torch']}; "
        f"load average at start {about['load_average_at_start']:.2f}.",
        "",
        "Ratios are dermabench / the library called directly (median of the runs; range: best and worst pairing). "
        "See `benchmarks/*.py` for exactly what each side does.",
    ]
    for group in dict.fromkeys(f.group for f in figures):
        lines += ["", f"## {group}", "", "| figure | value | range | target | met |", "|---|---|---|---|---|"]
        for f in (f for f in figures if f.group == group):
            spread = f"{_number(f.spread[0])}–{_number(f.spread[1])}" if f.spread else ""
            met = "" if f.met is None else ("yes" if f.met else "**no**")
            lines.append(f"| {f.name} | {_number(f.value)} {f.unit} | {spread} | {f.target} | {met} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=GROUPS, help="run only this group (repeatable)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per timed figure (default 5; smoke 1)")
    parser.add_argument("--smoke", action="store_true", help="seconds-long check that the runner works")
    parser.add_argument("--out", type=Path, default=Path("results"), help="folder for benchmarks.md/.json")
    args = parser.parse_args(argv)
    # 5, not 3: on 2 shared cores a 3-run median of the ~10 s ViT epoch pair read 1.11× in one run and
    # 0.98× (7 runs) an hour later
    repeats = args.repeats or (1 if args.smoke else 5)
    import torch

    if args.only and "gpu" in args.only and not torch.cuda.is_available():
        parser.error("--only gpu needs a CUDA device (torch.cuda.is_available() is false here)")
    groups = tuple(args.only or (g for g in GROUPS if g != "gpu" or torch.cuda.is_available()))
    about = {**machine(), "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "benchmarks.log"
    log.unlink(missing_ok=True)
    start = time.perf_counter()
    command = ("python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    figures: list[Figure] = []
    for done in collect(groups, args.smoke, repeats, log):
        # rewritten after every group: a run stopped half-way keeps the groups it finished
        figures += done
        seconds = time.perf_counter() - start
        write_json_atomic(args.out / "benchmarks.json", {
            "command": command, "machine": about, "seconds": seconds, "repeats": repeats,
            "figures": [f.to_dict() for f in figures],
        })
        text = markdown(figures, about, command, seconds)
        write_bytes_atomic(args.out / "benchmarks.md", text.encode())
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
