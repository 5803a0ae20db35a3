"""DermaFlux (tiny, CPU) quality benchmark: trained vs untrained vs the real floor.

Reproduces what the `quick` profile does with the `dermaflux` generator, without
the classifier arms: phantom (n=3000, 64 px) → the protocol's grouped split
(seed 0, 20 % val, 20 % test) → template captions → `fit` on the train pool →
`generate` N class-balanced prompts (`make_prompts`) → EfficientNet-Lite0
features (input_size 128, as in `quick`) → FID / KID / precision / recall
against the real test set, overall and per class, beside the real floor (N real
train-pool images vs the same test set).

Also measures whether the images show the *prompted* class: a logistic
regression on EfficientNet-Lite0 features of the real train pool (benign vs
malignant) scores the synthetic images; its AUC against the prompted labels is
reported beside the same probe's AUC on the real test set.

Variants (each a set of --generator-opt options) are given as arguments:

    python benchmarks/dermaflux_quality.py                      # untrained vs default (quick)
    python benchmarks/dermaflux_quality.py "train_steps=400" "train_steps=900,lr=2e-3"
    python benchmarks/dermaflux_quality.py --n 875 --out results/dermaflux_quality.json

"untrained" is always included (train=none: the randomly initialised tiny FLUX).
Timings are wall-clock and process CPU seconds; on a shared machine the CPU
seconds / threads are the better estimate of idle wall time.
"""

from __future__ import annotations

import argparse
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
from dermabench_plugins.template_captioner import TemplateCaptioner

import dermabench
from dermabench.grids import save_grid
from dermabench.metrics.fidelity import fid_from_statistics, fid_statistics, fidelity_metrics
from dermabench.prompts import make_prompts
from dermabench.splits import grouped_split


def parse_variant(text: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in text.split(",") if pair.strip())


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="*", help="comma-separated generator options per variant")
    parser.add_argument("--n", type=int, default=875, help="synthetic images per variant (quick: 875)")
    parser.add_argument("--n-data", type=int, default=3000, help="phantom images (quick: 3000)")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--input-size", type=int, default=128, help="EfficientNet-Lite0 input size (quick: 128)")
    parser.add_argument("--work-dir", default=None, help="generator work_dir (default: a fresh temp folder)")
    parser.add_argument("--grid", default="results/dermaflux_samples.png")
    parser.add_argument("--out", default=None, help="write the numbers as JSON here")
    parser.add_argument("--no-untrained", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    samples = list(PhantomDataset(n=args.n_data, size=64, seed=args.seed).samples())
    split = grouped_split(samples, args.seed, 0.2, 0.2)
    train = [samples[i] for i in split.indices("train")]
    test = [samples[i] for i in split.indices("test")]
    captions = TemplateCaptioner().caption(train, dermabench.RunContext())
    train = [replace(s, caption=c) for s, c in zip(train, captions)]
    print(f"data: {len(train)} train pool, {len(test)} test ({time.perf_counter() - t0:.1f} s)", flush=True)

    extractor = EfficientNetLite0(input_size=args.input_size)
    ctx = dermabench.RunContext(profile=args.profile, seed=args.seed, image_size=64)
    f_train = extractor.extract([s.image for s in train], ctx)
    f_test = extractor.extract([s.image for s in test], ctx)
    y_train = np.array([s.label for s in train])
    y_test = np.array([s.label for s in test])
    test_stats = fid_statistics(f_test)
    per_class_stats = {lab: fid_statistics(f_test[y_test == lab]) for lab in (0, 1)}

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000, class_weight="balanced"))
    probe.fit(f_train, y_train)
    rng = np.random.default_rng(args.seed)
    floor_idx = np.sort(rng.choice(len(train), size=min(args.n, len(train)), replace=False))
    floor = {
        "fid": fid_from_statistics(*fid_statistics(f_train[floor_idx]), *test_stats),
        "n_real_train": len(floor_idx),
        "probe_auc_real_test": auc(y_test, probe.predict_proba(f_test)[:, 1]),
        **{
            f"fid_{name}": fid_from_statistics(
                *fid_statistics(f_train[floor_idx][y_train[floor_idx] == lab]), *per_class_stats[lab]
            )
            for lab, name in dermabench.LABEL_NAMES.items()
        },
    }
    print(f"real floor: {json.dumps(floor)}", flush=True)

    prompts = make_prompts(train, args.n, args.seed)
    labels = np.array([p.label for p in prompts])
    variants = ([] if args.no_untrained else [("untrained", {"train": "none"})]) + [
        (v or "default", parse_variant(v)) for v in (args.variants or [""])
    ]
    results = {"floor": floor, "n_synthetic": args.n, "n_test": len(test), "n_train_pool": len(train),
               "extractor": extractor.describe(), "threads": args.threads, "variants": {}}
    rows = []
    # one work_dir for all variants: variants that differ only in sampling options share one fit
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="dermaflux-bench-"))
    context = replace(ctx, work_dir=work_dir)
    for name, options in variants:
        gen = DermaFluxGenerator(**options)
        w, c = time.perf_counter(), time.process_time()
        gen.fit(train, context)
        fit_wall, fit_cpu = time.perf_counter() - w, time.process_time() - c
        w, c = time.perf_counter(), time.process_time()
        images = gen.generate(prompts, context)
        gen_wall, gen_cpu = time.perf_counter() - w, time.process_time() - c
        f_syn = extractor.extract(images, context)
        metrics = fidelity_metrics(f_test, f_syn, seed=args.seed, real_statistics=test_stats)
        for lab, cls in dermabench.LABEL_NAMES.items():
            metrics[f"fid_{cls}"] = fid_from_statistics(*fid_statistics(f_syn[labels == lab]), *per_class_stats[lab])
        metrics["relative_fid"] = metrics["fid"] / floor["fid"]
        metrics["probe_auc_prompted_class"] = auc(labels, probe.predict_proba(f_syn)[:, 1])
        record = {
            "options": options,
            "fit_wall_s": round(fit_wall, 1),
            "fit_cpu_s": round(fit_cpu, 1),
            "generate_wall_s": round(gen_wall, 1),
            "generate_cpu_s": round(gen_cpu, 1),
            "images_per_s_wall": round(len(images) / gen_wall, 1),
            "fit": gen.last_fit,
            **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()},
        }
        results["variants"][name] = record
        print(f"{name}: {json.dumps(record)}", flush=True)
        for lab, cls in dermabench.LABEL_NAMES.items():
            rows.append((f"{name} {cls}", [im for im, p in zip(images, prompts) if p.label == lab][:10]))
    real_rows = [(f"real {cls}", [s.image for s in train if s.label == lab][:10]) for lab, cls in dermabench.LABEL_NAMES.items()]
    grid = save_grid(real_rows + rows, args.grid, title="dermaflux (tiny, CPU): real vs synthetic, by prompted class")
    results["grid"] = str(grid)
    print(f"grid: {grid}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
