"""FID, KID and precision/recall from feature vectors, on torch-fidelity's own feature-level code.

Pure steps: features → statistics → distance. Nothing here touches images or an
extractor; the host extracts features once (any `FeatureExtractor`) and calls
these functions. All arithmetic is float64.

torch-fidelity functions used (torch-fidelity >= 0.4, where precision/recall exist):
  * FID: `metric_fid.fid_features_to_statistics`, then the distance in the symmetric form
    of `fid_statistics_to_metric` (see `fid_from_statistics`)
  * KID: `metric_kid.kid_features_to_metric` (polynomial kernel, degree 3,
    gamma = 1/dim, coef0 = 1, unbiased MMD², `kid_subsets` random subsets)
  * precision/recall: `metric_prc.prc_features_to_metric` (Kynkäänniemi et al. 2019,
    k-NN balls with k = `prc_neighborhood`)

Precision / recall roles (torch-fidelity issue #58, open, reports them swapped):
in torch-fidelity 0.4.0, `prc_features_to_metric(features_1, features_2)`
returns as "precision" the fraction of features_1 inside the k-NN manifold of
features_2, and as "recall" the fraction of features_2 inside the manifold of
features_1. We want precision = fraction of SYNTHETIC samples inside the REAL
manifold and recall = fraction of REAL samples inside the SYNTHETIC manifold, so
the call is `prc_features_to_metric(synthetic, real)`. Checked in
tests/test_fidelity.py (synthetic = a tight subset of the real distribution →
precision ≈ 1, recall ≈ 0). Because a future torch-fidelity may fix #58 by
swapping its internal roles, `_prc_synthetic_first()` probes the installed
version once per process on a deterministic toy set and picks the argument
order that gives these meanings.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

KID_DEFAULT_SUBSET_SIZE = 1000
KID_DEFAULT_SUBSETS = 100


def _as_features(x: Any, what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{what}: features must be a 2-d array (n, dim), got shape {arr.shape}")
    if arr.shape[0] < 2:
        raise ValueError(
            f"{what}: at least 2 samples are needed for FID/KID/precision-recall (a covariance and an "
            f"unbiased MMD need n >= 2), got {arr.shape[0]}"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"{what}: features contain NaN or inf")
    return arr


def fid_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of a feature set, float64: mean (dim,) and covariance (dim, dim), ddof = 1.

    Cache these for a fixed real set and pass them to `fid_from_statistics`.
    """
    from torch_fidelity.metric_fid import fid_features_to_statistics

    feats = _as_features(features, "fid_statistics")
    with threadpool_limits(limits=1, user_api="blas"):  # see fid_from_statistics
        stats = fid_features_to_statistics(torch.from_numpy(feats))
    return np.asarray(stats["mu"], dtype=np.float64), np.asarray(stats["sigma"], dtype=np.float64)


def fid_from_statistics(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between two Gaussians: |mu1 - mu2|² + tr(S1) + tr(S2) - 2 tr((S1 S2)^½).

    torch-fidelity's `fid_statistics_to_metric` takes tr((S1 S2)^½) as the sum of the
    square roots of the eigenvalues of the non-symmetric S1 S2 (negative ones count as
    0). The same eigenvalues are those of the symmetric PSD matrix S1^½ S2 S1^½, which
    two `eigh` calls find about 10× faster at 1280 dimensions (6.5 s → 0.6 s each here;
    a run computes six FIDs). tests/test_fidelity.py checks the two agree to 1e-6.
    Rounding below 0 (a set against itself can give -1.7e-6) is clipped to 0.
    """
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    sigma1, sigma2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    if mu1.shape != mu2.shape or mu1.ndim != 1 or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(
            f"fid_from_statistics: mismatched statistics mu {mu1.shape}/{mu2.shape}, sigma {sigma1.shape}/{sigma2.shape}"
        )
    # one BLAS thread: OpenBLAS's threaded eigensolver slows down up to 30x when the
    # cores are shared (0.6 s alone vs 18 s measured here under load), and gains little otherwise
    with threadpool_limits(limits=1, user_api="blas"):
        values, vectors = np.linalg.eigh(sigma1)
        root1 = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
        product = root1 @ sigma2 @ root1
        eigenvalues = np.linalg.eigvalsh((product + product.T) / 2)
    trace_sqrt = float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())
    diff = mu1 - mu2
    # a distance is >= 0; rounding in the trace terms can leave about -1e-6 for two near-identical sets
    return max(0.0, float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt))


def fid_torch_fidelity(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The same distance through torch-fidelity's own function (the reference for tests)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    out = fid_statistics_to_metric({"mu": mu1, "sigma": sigma1}, {"mu": mu2, "sigma": sigma2}, verbose=False)
    return float(out[KEY_METRIC_FID])


@functools.lru_cache(maxsize=1)
def _prc_synthetic_first() -> bool:
    """True if `prc_features_to_metric(synthetic, real)` gives precision = synthetic-in-real (see module doc)."""
    from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

    rng = np.random.default_rng(12345)
    real = torch.from_numpy(rng.standard_normal((200, 4)))
    tight = torch.from_numpy(0.05 * rng.standard_normal((100, 4)))  # a tight subset of the real distribution
    out = prc_features_to_metric(tight, real, prc_neighborhood=3, verbose=False)
    p, r = out[KEY_METRIC_PRECISION], out[KEY_METRIC_RECALL]
    if p > 0.9 and r < 0.1:
        return True
    if r > 0.9 and p < 0.1:
        return False
    raise RuntimeError(f"cannot tell torch-fidelity's precision/recall roles (probe gave precision={p}, recall={r})")


def precision_recall(real: np.ndarray, synthetic: np.ndarray, neighborhood: int = 3) -> tuple[float, float]:
    """(precision, recall) with precision = synthetic-in-real-manifold, recall = real-in-synthetic-manifold.

    `neighborhood` must be < min(n_real, n_synthetic); `fidelity_metrics` adapts it.
    """
    from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

    r = torch.from_numpy(_as_features(real, "real"))
    s = torch.from_numpy(_as_features(synthetic, "synthetic"))
    if not 1 <= neighborhood < min(len(r), len(s)):
        raise ValueError(f"precision_recall: neighborhood must be in [1, {min(len(r), len(s)) - 1}], got {neighborhood}")
    first, second = (s, r) if _prc_synthetic_first() else (r, s)
    # save_cpu_ram: row-chunked distance matrices, memory O(batch × n) instead of O(n²) several times
    out = prc_features_to_metric(
        first, second, prc_neighborhood=neighborhood, prc_batch_size=2048, save_cpu_ram=True, verbose=False
    )
    precision, recall = float(out[KEY_METRIC_PRECISION]), float(out[KEY_METRIC_RECALL])
    if not _prc_synthetic_first():
        precision, recall = recall, precision
    # torch-fidelity averages in float32; both are counts over n, so return the exact fraction
    return round(precision * len(s)) / len(s), round(recall * len(r)) / len(r)


def kid(
    real: np.ndarray,
    synthetic: np.ndarray,
    subset_size: int | None = None,
    subsets: int = KID_DEFAULT_SUBSETS,
    seed: int = 0,
) -> dict[str, float | int]:
    """KID (mean, std over random subsets) with the subset size adapted to small N.

    subset_size defaults to min(1000, n_real, n_synthetic) and is capped at that
    minimum. When it equals both set sizes every subset is the whole set (MMD is
    permutation-invariant), so one subset is computed and std is 0.
    """
    from torch_fidelity.metric_kid import kernel_poly

    r, s = _as_features(real, "real"), _as_features(synthetic, "synthetic")
    if r.shape[1] != s.shape[1]:
        raise ValueError(f"kid: feature dims differ (real {r.shape[1]}, synthetic {s.shape[1]})")
    n_min = min(len(r), len(s))
    size = KID_DEFAULT_SUBSET_SIZE if subset_size is None else int(subset_size)
    if size < 2:
        raise ValueError(f"kid: subset_size must be >= 2, got {size}")
    size = min(size, n_min)
    subsets = int(subsets)
    if subsets < 1:
        raise ValueError(f"kid: subsets must be >= 1, got {subsets}")
    if size == len(r) == len(s):
        subsets = 1
    # torch-fidelity's KID, subset for subset: its argument order is (input1 = generated, input2 = real), it draws
    # the input1 subset first from np.random.RandomState(seed), and its polynomial kernel and unbiased MMD²
    # estimator are kept. Only the kernel matrices are computed once for the whole sets, and each subset's kernel
    # sums are read off them with its 0/1 membership vector (wᵀKw), where torch-fidelity recomputes the matrices
    # for each of its 100 subsets (19 of a 25 s fidelity step at the `quick` size)
    with threadpool_limits(limits=1, user_api="blas"):  # see fid_from_statistics
        k_ss, k_sr, k_rr = kernel_poly(s, s), kernel_poly(s, r), kernel_poly(r, r)
        rng = np.random.RandomState(int(seed))
        in_s, in_r = np.zeros((subsets, len(s))), np.zeros((subsets, len(r)))
        for i in range(subsets):
            in_s[i, rng.choice(len(s), size, replace=False)] = 1.0
            in_r[i, rng.choice(len(r), size, replace=False)] = 1.0
        ss = ((in_s @ k_ss) * in_s).sum(axis=1) - in_s @ np.diag(k_ss)  # off-diagonal sums, as mmd2 takes them
        rr = ((in_r @ k_rr) * in_r).sum(axis=1) - in_r @ np.diag(k_rr)
        sr = ((in_s @ k_sr) * in_r).sum(axis=1)
    m = size
    mmds = (ss + rr) / (m * (m - 1)) - 2 * sr / (m * m)
    return {
        "kid_mean": float(np.mean(mmds)),
        "kid_std": float(np.std(mmds)),
        "kid_subset_size": int(size),
        "kid_subsets": int(subsets),
    }


def fidelity_metrics(
    real: np.ndarray,
    synthetic: np.ndarray,
    kid_subset_size: int | None = None,
    prc_neighborhood: int = 3,
    seed: int = 0,
    *,
    kid_subsets: int = KID_DEFAULT_SUBSETS,
    real_statistics: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, float | int]:
    """FID, KID (mean, std), precision and recall between real and synthetic feature sets.

    Returns plain Python numbers (JSON-ready):
      fid, kid_mean, kid_std, kid_subset_size, kid_subsets, precision, recall,
      prc_neighborhood, n_real, n_synthetic, feature_dim
    kid_subset_size / prc_neighborhood are the values actually used (adapted to
    small N: kid_subset_size <= min(n_real, n_synthetic), prc_neighborhood <= min(n) - 1).
    `real_statistics` = cached `fid_statistics(real)` skips recomputing them.
    Raises ValueError for fewer than 2 samples on either side, NaN/inf, or mismatched dims.
    """
    r, s = _as_features(real, "real"), _as_features(synthetic, "synthetic")
    if r.shape[1] != s.shape[1]:
        raise ValueError(f"fidelity_metrics: feature dims differ (real {r.shape[1]}, synthetic {s.shape[1]})")
    mu_r, sigma_r = real_statistics if real_statistics is not None else fid_statistics(r)
    mu_s, sigma_s = fid_statistics(s)
    fid = fid_from_statistics(mu_s, sigma_s, mu_r, sigma_r)
    kid_out = kid(r, s, subset_size=kid_subset_size, subsets=kid_subsets, seed=seed)
    k = max(1, min(int(prc_neighborhood), len(r) - 1, len(s) - 1))
    precision, recall = precision_recall(r, s, neighborhood=k)
    return {
        "fid": fid,
        **kid_out,
        "precision": precision,
        "recall": recall,
        "prc_neighborhood": int(k),
        "n_real": int(len(r)),
        "n_synthetic": int(len(s)),
        "feature_dim": int(r.shape[1]),
    }
