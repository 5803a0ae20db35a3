"""Sampling efficiency: FID of each tiny generator (DermaFlux vs Stable Diffusion) against sampling steps.

The rectified-flow claim is that a flow model needs fewer sampling steps than a DDPM
model for the same quality. This benchmark measures it on the CPU models, under the
equal budget the `quick` profile gives both: phantom (n=3000, 64 px) → the protocol's
grouped split (seed 0, 20 % val, 20 % test) → template captions → `fit` on the train
pool (`dermaflux` and `sd15` with ``model=tiny``, DermaFlux tiny's per-profile steps ×
batch) → for each step count (4, 8, 16, 32, 50) `generate` the same N class-balanced
prompts with the same seeds → EfficientNet-Lite0 features (input 128, as in `quick`) →
FID / KID / precision / recall against the same real test set, beside the real floor
(N real train-pool images vs the test set) and FID / floor.

Samplers: DermaFlux samples with FLUX's Euler flow solver (first order); SD with each of
``--sd-samplers`` (default DPM-Solver++ 2M, second order, SD's usual few-step choice,
and DDIM, the first-order counterpart of Euler). No classifier-free guidance, so one
network evaluation per step for every curve.

    python benchmarks/sampling_steps.py                                   # the full run (minutes to hours on 2 cores)
    python benchmarks/sampling_steps.py --train-steps 20 --n 64 --n-data 400 --steps 4,8 --csv /tmp/s.csv --png /tmp/s.png

Writes results/sampling_steps.csv (one row per generator × sampler × steps) and
results/sampling_steps.png (FID against steps, log axis, real floor dashed).
Timings in the CSV are wall-clock on whatever machine ran it; on a shared machine they
are not comparable across runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from dermabench_plugins.dermaflux import DermaFluxGenerator
from dermabench_plugins.efficientnet_lite0 import EfficientNetLite0
from dermabench_plugins.phantom import PhantomDataset
from dermabench_plugins.stable_diffusion import StableDiffusionGenerator
from dermabench_plugins.template_captioner import TemplateCaptioner

import dermabench
from dermabench.metrics.fidelity import fid_from_statistics, fid_statistics, fidelity_metrics
from dermabench.prompts import make_prompts
from dermabench.splits import grouped_split

COLUMNS = ("generator", "sampler", "steps", "fid", "relative_fid", "fid_real_floor", "kid_mean", "kid_std",
           "precision", "recall", "n_synthetic", "n_test", "train_steps", "train_batch_size", "final_loss",
           "generate_wall_s")  # fmt: skip


def plot(rows: list[dict], floor: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    curves = sorted({(r["generator"], r["sampler"]) for r in rows})
    for generator, sampler in curves:
        points = sorted((r["steps"], r["fid"]) for r in rows if (r["generator"], r["sampler"]) == (generator, sampler))
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{generator} ({sampler})")
    ax.axhline(floor, color="grey", linestyle="--", label="real floor (train vs test)")
    ax.set_xscale("log")
    steps = sorted({r["steps"] for r in rows})
    ax.set_xticks(steps)
    ax.set_xticklabels([str(s) for s in steps])
    ax.minorticks_off()
    ax.set_xlabel("sampling steps (network evaluations per image)")
    ax.set_ylabel("FID vs real test set (EfficientNet-Lite0)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="4,8,16,32,50", help="comma-separated sampling step counts")
    parser.add_argument("--sd-samplers", default="dpmsolver++,ddim", help="sd15 samplers to measure")
    parser.add_argument("--n", type=int, default=875, help="synthetic images per point (quick: 875)")
    parser.add_argument("--n-data", type=int, default=3000, help="phantom images (quick: 3000)")
    parser.add_argument("--profile", default="quick", help="sets the training budget (TINY_TRAIN_DEFAULTS)")
    parser.add_argument("--train-steps", type=int, default=None, help="override the profile's training steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--input-size", type=int, default=128, help="EfficientNet-Lite0 input size (quick: 128)")
    parser.add_argument("--work-dir", default=None, help="generator work_dir (default: a fresh temp folder); "
                        "reusing one reuses the fits")
    parser.add_argument("--csv", default="results/sampling_steps.csv")
    parser.add_argument("--png", default="results/sampling_steps.png")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    step_counts = sorted({int(s) for s in args.steps.split(",") if s.strip()})
    samplers = [s.strip() for s in args.sd_samplers.split(",") if s.strip()]

    t0 = time.perf_counter()
    samples = list(PhantomDataset(n=args.n_data, size=64, seed=args.seed).samples())
    split = grouped_split(samples, args.seed, 0.2, 0.2)
    train = [samples[i] for i in split.indices("train")]
    test = [samples[i] for i in split.indices("test")]
    captions = TemplateCaptioner().caption(train, dermabench.RunContext())
    train = [replace(s, caption=c) for s, c in zip(train, captions)]
    print(f"data: {len(train)} train pool, {len(test)} test ({time.perf_counter() - t0:.1f} s)", flush=True)

    extractor = EfficientNetLite0(input_size=args.input_size)
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="sampling-steps-"))
    context = dermabench.RunContext(profile=args.profile, seed=args.seed, image_size=64, work_dir=work_dir)
    f_train = extractor.extract([s.image for s in train], context)
    f_test = extractor.extract([s.image for s in test], context)
    test_stats = fid_statistics(f_test)
    rng = np.random.default_rng(args.seed)
    floor_idx = np.sort(rng.choice(len(train), size=min(args.n, len(train)), replace=False))
    floor = fid_from_statistics(*fid_statistics(f_train[floor_idx]), *test_stats)
    print(f"real floor FID: {floor:.2f} ({len(floor_idx)} train-pool images vs {len(test)} test)", flush=True)

    prompts = make_prompts(train, args.n, args.seed)  # the same prompts and seeds for every point
    train_opts = {} if args.train_steps is None else {"train_steps": str(args.train_steps)}
    curves = [("dermaflux", "euler", DermaFluxGenerator, {})]
    curves += [("sd15", sampler, StableDiffusionGenerator, {"sampler": sampler}) for sampler in samplers]
    rows: list[dict] = []
    for name, sampler, cls, extra in curves:
        for steps in step_counts:
            gen = cls(**train_opts, **extra, steps=str(steps))
            gen.fit(train, context)  # trained once per generator: later step counts reuse the saved fit
            budget = gen.resolved(context)
            w = time.perf_counter()
            images = gen.generate(prompts, context)
            seconds = time.perf_counter() - w
            metrics = fidelity_metrics(f_test, extractor.extract(images, context), seed=args.seed,
                                       real_statistics=test_stats)
            row = {
                "generator": name,
                "sampler": sampler,
                "steps": steps,
                **metrics,
                "relative_fid": metrics["fid"] / floor,
                "fid_real_floor": floor,
                "n_test": len(test),
                "train_steps": budget["train_steps"],
                "train_batch_size": budget["train_batch_size"],
                "final_loss": gen.last_fit.get("final_loss"),
                "generate_wall_s": round(seconds, 1),
            }
            rows.append(row)
            print(json.dumps({k: row[k] for k in COLUMNS}, default=str), flush=True)
            write_csv(rows, Path(args.csv))  # after every point: a killed run keeps what it measured

    title = (f"tiny generators trained {rows[0]['train_steps']} steps × {rows[0]['train_batch_size']} "
             f"({args.profile} profile{'' if args.train_steps is None else ', steps overridden'})\nphantom 64 px, "
             f"N={args.n}")
    plot(rows, floor, Path(args.png), title)
    print(f"\n{'generator':<10} {'sampler':<12} " + " ".join(f"{s:>8}" for s in step_counts))
    for name, sampler, _, _ in curves:
        fids = {r["steps"]: r["fid"] for r in rows if (r["generator"], r["sampler"]) == (name, sampler)}
        print(f"{name:<10} {sampler:<12} " + " ".join(f"{fids[s]:8.1f}" for s in step_counts))
    print(f"{'real floor':<23} {floor:8.1f}\nwrote {args.csv} and {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
