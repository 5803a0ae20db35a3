"""Result JSONs (and run folders) that follow the contract, made in microseconds for table and report tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from dermabench.results import SCHEMA_VERSION, validate_result

METRICS = ("accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity", "f1")


def arm(n_real: int, n_synthetic: int, base: float, delta: float | None = None) -> dict:
    values = {"n_real": n_real, "n_synthetic": n_synthetic, "seeds": [0]}
    for k, metric in enumerate(METRICS):
        value = round(base + 0.01 * k + 0.00037, 6)
        values[metric] = value
        values[f"{metric}_ci95"] = [round(value - 0.08, 6), round(min(value + 0.07, 1.0), 6)]
    if delta is not None:
        values["delta_vs_real"] = {
            metric: {"value": delta + 0.001 * k, "ci95": [delta - 0.1, delta + 0.1], "p_value": 0.25}
            for k, metric in enumerate(METRICS)
        }
    return values


def make_result(run_id: str = "run-a", generator: str = "augment", classifier: str = "cnn",
                dataset: str = "phantom", extractor: str = "efficientnet-lite0", profile: str = "smoke",
                n_real: int = 120, n_synthetic: int = 120, seed: int = 0, fid: float = 150.123456,
                auc: float = 0.7, delta: float = 0.02, created: str = "2026-01-01T00:00:00+00:00") -> dict:
    result = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "created": created,
        "dermabench_version": "0.1.0",
        "git_commit": "0123abc",
        "protocol": {"name": "real-vs-synthetic", "version": 1},
        "profile": profile,
        "config": {"profile": profile, "generator": generator, "classifier": classifier, "dataset": dataset,
                   "test_dataset": None, "extractor": extractor, "seed": seed, "seeds": 1, "n_real": n_real,
                   "n_synthetic": n_synthetic, "image_size": 64, "arms": ["real", "real+synthetic", "synthetic"],
                   "generator_options": {}},
        "plugins": {slot: {"name": name, "plugin": name, "version": "0.1.0"}
                    for slot, name in (("dataset", dataset), ("generator", generator), ("classifier", classifier),
                                       ("extractor", extractor))},
        "data": {"n_train_pool": 300, "n_val": 100, "n_test": 100, "n_test_lesions": 58, "rejected_images": 0,
                 "converted_images": 0, "prevalence": {"train_pool": 0.26, "val": 0.26, "test": 0.26}},
        "fidelity": {
            "extractor": extractor, "n_real": 100, "n_synthetic": n_synthetic, "fid": fid, "kid_mean": 0.0123,
            "kid_std": 0.002, "precision": 0.61, "recall": 0.72, "fid_real_floor": 100.5, "n_real_floor": 120,
            "relative_fid": fid / 100.5,
            "per_class": {"benign": {"fid": fid + 10, "n_real": 74, "n_synthetic": n_synthetic // 2},
                          "malignant": {"fid": fid + 20, "n_real": 26, "n_synthetic": n_synthetic // 2}},
        },
        "memorization": {"extractor": extractor, "n": n_synthetic, "threshold": 0.07, "threshold_quantile": 0.05,
                         "near_copy_rate": 0.05},
        "arms": {
            "real": arm(n_real, 0, auc - 0.05),
            "real+synthetic": arm(n_real, n_synthetic, auc, delta),
            "synthetic": arm(0, n_synthetic, auc - 0.1, delta - 0.05),
        },
        "timings_s": {"fidelity": 1.5, "classify": 2.0, "total": 4.0},
        "environment": {"python": "3.11", "torch": "2.x", "device": "cpu", "packages": {"numpy": "2"}},
    }
    for name in ("real", "real+synthetic", "synthetic"):  # AUC exactly as given, so tests can name it
        result["arms"][name]["auc"] = round({"real": auc - 0.05, "real+synthetic": auc, "synthetic": auc - 0.1}[name], 6)
    validate_result(result)
    return result


def write_run(folder: Path, result: dict, images: bool = True) -> Path:
    """A run folder as the protocol writes it: result.json, predictions.json and the two PNG grids."""
    run_dir = folder / result["run_id"]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "result.json").write_text(json.dumps(result, indent=2))
    rng = np.random.default_rng(0)
    labels = [0] * 30 + [1] * 10
    predictions = {
        "image_id": [f"img{i}" for i in range(40)],
        "group": [f"lesion{i // 2}" for i in range(40)],
        "label": labels,
        "p_malignant": {
            arm_name: [np.clip(0.3 * np.array(labels) + rng.uniform(0, 0.7, 40), 0, 1).round(4).tolist()]
            for arm_name in result["arms"]
        },
    }
    (run_dir / "predictions.json").write_text(json.dumps(predictions))
    if images:
        Image.new("RGB", (64, 32), (200, 120, 90)).save(run_dir / "samples.png")
        Image.new("RGB", (48, 24), (90, 120, 200)).save(run_dir / "closest_pairs.png")
    return run_dir
