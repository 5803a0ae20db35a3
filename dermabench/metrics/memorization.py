"""Memorization: is each synthetic image closer to a training image than real unseen images get?

For every synthetic image: its nearest real TRAIN image in feature space, by
cosine distance (1 - cosine similarity of L2-normalised features, in [0, 2]).
The yardstick is what real images of the same dataset that the generator never
saw reach: the nearest-train distances of a held-out CALIBRATION set (the host
passes the validation split). The threshold is their `quantile` (default 5 %),
and near_copy_rate is the fraction of synthetic images strictly closer than
that. A generator that samples the real distribution without copying lands
near `quantile` (about 0.05); one that copies training images lands near 1.0.
The rate depends on the extractor (the host records which).

Classes sit at different densities (the classes' nearest-train distances
differ), and the synthetic set is usually class-balanced while the calibration
set is at the dataset's prevalence. With labels for both sets, each class gets
its own threshold (the quantile of that class's calibration distances), so a
non-copying generator lands near `quantile` in every class and overall,
whatever the class mix. The nearest train image is searched among all train
images (a copy of an image of the other class is a copy too).

Distances are computed in row chunks so memory stays bounded (≈ 64 MB of
similarities at a time, e.g. 5,000 synthetic × 10,000 train).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dermabench.api import LABEL_NAMES

#: keys of `memorization()`'s result that hold numpy arrays (per synthetic image, in input
#: order); strip them before writing JSON, use them for a closest-pairs grid.
ARRAY_KEYS = ("nearest_train_index", "distances")

_CHUNK_BYTES = 64 * 2**20


def unit_rows(x: Any, what: str) -> np.ndarray:
    """`x` as float64 rows of length 1, the input `nearest_neighbours` needs; ValueError naming `what` if unfit."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 1:
        raise ValueError(f"memorization: {what} features must be a non-empty 2-d array (n, dim), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"memorization: {what} features contain NaN or inf")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.maximum(norms, 1e-12)


def nearest_neighbours(queries: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of `queries`: (index of the nearest row of `reference`, cosine distance).

    Both inputs must already be L2-normalised float64; computed in bounded-memory chunks.
    Ties go to the lowest reference index.
    """
    n, m = len(queries), len(reference)
    index = np.empty(n, dtype=np.int64)
    dist = np.empty(n, dtype=np.float64)
    rows = max(1, _CHUNK_BYTES // (8 * max(m, 1)))
    ref_t = np.ascontiguousarray(reference.T)
    for start in range(0, n, rows):
        sim = queries[start : start + rows] @ ref_t
        best = np.argmax(sim, axis=1)
        index[start : start + rows] = best
        dist[start : start + rows] = 1.0 - sim[np.arange(len(best)), best]
    np.clip(dist, 0.0, 2.0, out=dist)
    return index, dist


def memorization(
    synthetic: np.ndarray,
    train: np.ndarray,
    calibration: np.ndarray,
    quantile: float = 0.05,
    *,
    synthetic_labels: Any = None,
    calibration_labels: Any = None,
) -> dict[str, Any]:
    """Near-copy rate of synthetic features against the real train set, calibrated on held-out real images.

    `calibration`: features of real images of the same dataset that neither the
    generator nor the train set contains (the validation split). With
    `synthetic_labels` and `calibration_labels` (give both or neither) each class
    is judged by its own threshold; a synthetic class without calibration images
    falls back to the class-blind threshold (said in its `note`).

    Returns
      JSON-ready: near_copy_rate (float, over all synthetic images), threshold (float, cosine
        distance: the class-blind quantile of all calibration distances), threshold_quantile (float),
        class_conditional (bool: per-class thresholds were applied), n (synthetic count), n_train,
        n_calibration, distance ("cosine"), median_distance (synthetic→train),
        calibration_median_distance (calibration→train),
        per_class (only with labels): {class name: {near_copy_rate, threshold, n, n_calibration, note?}}
      numpy arrays (see ARRAY_KEYS; strip before JSON):
        nearest_train_index (int64, (n,)): index into `train` of each synthetic image's nearest neighbour
        distances (float64, (n,)): that cosine distance; sort ascending for the closest pairs
    """
    q = float(quantile)
    if not 0.0 < q < 1.0:
        raise ValueError(f"memorization: quantile must be in (0, 1), got {quantile}")
    if (synthetic_labels is None) != (calibration_labels is None):
        raise ValueError("memorization: give both synthetic_labels and calibration_labels, or neither")
    s = unit_rows(synthetic, "synthetic")
    tr = unit_rows(train, "train")
    cal = unit_rows(calibration, "calibration")
    if not s.shape[1] == tr.shape[1] == cal.shape[1]:
        raise ValueError(
            f"memorization: feature dims differ (synthetic {s.shape[1]}, train {tr.shape[1]}, "
            f"calibration {cal.shape[1]})"
        )
    _, cal_dist = nearest_neighbours(cal, tr)
    threshold = float(np.quantile(cal_dist, q))
    index, dist = nearest_neighbours(s, tr)
    out: dict[str, Any] = {
        "near_copy_rate": float(np.mean(dist < threshold)),
        "threshold": threshold,
        "threshold_quantile": q,
        "class_conditional": False,
        "n": len(s),
        "n_train": len(tr),
        "n_calibration": len(cal),
        "distance": "cosine",
        "median_distance": float(np.median(dist)),
        "calibration_median_distance": float(np.median(cal_dist)),
    }
    if synthetic_labels is not None:
        s_labels = _labels(synthetic_labels, len(s), "synthetic_labels")
        c_labels = _labels(calibration_labels, len(cal), "calibration_labels")
        thresholds = np.full(len(s), threshold)
        per_class: dict[str, Any] = {}
        for label in np.unique(s_labels).tolist():
            chosen, reference = s_labels == label, cal_dist[c_labels == label]
            entry: dict[str, Any] = {"n": int(chosen.sum()), "n_calibration": int(reference.size)}
            if reference.size:
                thresholds[chosen] = entry["threshold"] = float(np.quantile(reference, q))
            else:
                entry["threshold"] = threshold
                entry["note"] = "no calibration image of this class: the class-blind threshold"
            entry["near_copy_rate"] = float(np.mean(dist[chosen] < thresholds[chosen]))
            per_class[LABEL_NAMES.get(label, str(label))] = entry
        out["near_copy_rate"] = float(np.mean(dist < thresholds))
        out["class_conditional"] = True
        out["per_class"] = per_class
    out["nearest_train_index"] = index
    out["distances"] = dist
    return out


def _labels(labels: Any, n: int, what: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.shape != (n,):
        raise ValueError(f"memorization: {what} must hold one label per image ({n}), got shape {arr.shape}")
    if arr.dtype.kind not in "biu":
        raise ValueError(f"memorization: {what} must be integer class labels, got dtype {arr.dtype}")
    return arr.astype(np.int64)
