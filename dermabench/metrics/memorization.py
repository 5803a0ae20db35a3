"""Memorization: is each synthetic image closer to a training image than real unseen images get?

For every synthetic image: its nearest real TRAIN image in feature space, by
cosine distance (1 - cosine similarity of L2-normalised features, in [0, 2]).
The yardstick is what real images the generator never saw reach: the nearest
train distances of the real TEST images. The threshold is their `quantile`
(default 5 %), and near_copy_rate is the fraction of synthetic images strictly
closer than that. A generator that samples the real distribution without
copying lands near `quantile` (about 0.05); one that copies training images
lands near 1.0. The rate depends on the extractor (the host records which).

Distances are computed in row chunks so memory stays bounded (≈ 64 MB of
similarities at a time, e.g. 5,000 synthetic × 10,000 train).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: keys of `memorization()`'s result that hold numpy arrays (per synthetic image, in input
#: order); strip them before writing JSON, use them for a closest-pairs grid.
ARRAY_KEYS = ("nearest_train_index", "distances")

_CHUNK_BYTES = 64 * 2**20


def _normalised(x: Any, what: str) -> np.ndarray:
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
    test: np.ndarray,
    quantile: float = 0.05,
) -> dict[str, Any]:
    """Near-copy rate of synthetic features against the real train set, calibrated on real test.

    Returns
      JSON-ready: near_copy_rate (float), threshold (float, cosine distance),
        threshold_quantile (float), n (synthetic count), n_train, n_test,
        distance ("cosine"), median_distance (synthetic→train), test_median_distance (test→train)
      numpy arrays (see ARRAY_KEYS; strip before JSON):
        nearest_train_index (int64, (n,)): index into `train` of each synthetic image's nearest neighbour
        distances (float64, (n,)): that cosine distance; sort ascending for the closest pairs
    """
    q = float(quantile)
    if not 0.0 < q < 1.0:
        raise ValueError(f"memorization: quantile must be in (0, 1), got {quantile}")
    s = _normalised(synthetic, "synthetic")
    tr = _normalised(train, "train")
    te = _normalised(test, "test")
    if not s.shape[1] == tr.shape[1] == te.shape[1]:
        raise ValueError(
            f"memorization: feature dims differ (synthetic {s.shape[1]}, train {tr.shape[1]}, test {te.shape[1]})"
        )
    _, test_dist = nearest_neighbours(te, tr)
    threshold = float(np.quantile(test_dist, q))
    index, dist = nearest_neighbours(s, tr)
    return {
        "near_copy_rate": float(np.mean(dist < threshold)),
        "threshold": threshold,
        "threshold_quantile": q,
        "n": int(len(s)),
        "n_train": int(len(tr)),
        "n_test": int(len(te)),
        "distance": "cosine",
        "median_distance": float(np.median(dist)),
        "test_median_distance": float(np.median(test_dist)),
        "nearest_train_index": index,
        "distances": dist,
    }
