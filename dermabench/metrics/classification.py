"""Classification metrics per arm, with lesion × seed bootstrap CIs (protocol step 8).

Label 1 = malignant, 0 = benign; a prediction is malignant when
``p_malignant >= threshold``.

* :func:`classification_metrics` scores one probability vector with scikit-learn.
* :func:`evaluate_arms` scores every arm (one probability vector per classifier
  seed, all on the same real test images): the point estimate is the mean over
  seeds, ``<metric>_std`` the sample std across seeds, ``<metric>_ci95`` a
  percentile interval from a two-way bootstrap, and ``delta_vs_<reference>``
  the paired difference to the reference arm, computed on the very same
  resamples.

Two sources of variation: the test set (which lesions were photographed) and
training (which classifier seed was drawn). A resample therefore draws whole
lesions with replacement AND, for an arm trained with K > 1 seeds, K of its
seed columns with replacement; the arm's value in that resample is the mean
of the metric over the drawn seeds. Arms with the same K share the seed draws
(seed k of `real` and of `real+synthetic` start from the same real images and
initialisation, so they are paired); arms with different K draw independently.
With K = 1 only lesions are resampled, so the CI is conditional on the one
trained model: each arm records which in ``ci_resamples`` ("lesions" or
"lesions+seeds"). Averaging the seeds before a lesion-only bootstrap would
ignore the training variance: two arms that differ only by seed got a delta CI
excluding 0 in about a third of runs at K = 5.

The bootstrap is vectorised: a resample is a vector of integer multiplicities
over the test images (every image of a drawn lesion gets the lesion's count),
and every metric is evaluated as a weighted metric on those counts, which is
identical to evaluating it on the resampled images (tests check this against
scikit-learn, to 1e-12). AUC uses the Mann-Whitney statistic with
multiplicities, sensitivity-at-specificity the weighted ROC curve. The seed
draws are multiplicities over an arm's seed columns in the same way.

A metric that is undefined (e.g. AUC when the labels hold one class) is
``None`` in the results; bootstrap resamples in which it is undefined are
skipped for that metric and the number of valid ones is recorded in
``n_boot_valid``. Every returned value is a plain Python ``float``/``int``/
``list``/``None`` (JSON-serialisable).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from dermabench.seeding import derive_seed

__all__ = [
    "METRICS",
    "classification_metrics",
    "evaluate_arms",
    "grouped_bootstrap_counts",
    "grouped_bootstrap_indices",
    "seed_bootstrap_counts",
]

METRICS = (
    "accuracy",
    "balanced_accuracy",
    "auc",
    "sensitivity",
    "specificity",
    "f1",
    "sens_at_spec80",
    "sens_at_spec90",
)

# target specificity of each sens_at_spec metric
_SENS_AT_SPEC = {"sens_at_spec80": 0.80, "sens_at_spec90": 0.90}
# specificities are ratios of integer counts; this only absorbs rounding (k/n vs 0.8)
_SPEC_TOL = 1e-9
# bootstrap resamples processed at once: bounds the (resamples x images) weight matrix
_CHUNK_ELEMENTS = 2_000_000


# ----------------------------------------------------------------------------- validation


def _as_labels(y_true: Any, name: str = "y_true") -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per test image), got shape {y.shape}")
    if y.size == 0:
        raise ValueError(f"{name} is empty: there are no test images to score")
    if y.dtype == bool:
        return y.astype(np.int64)
    if y.dtype.kind not in "iuf":
        raise ValueError(f"{name} must hold integer labels 0 (benign) / 1 (malignant), got dtype {y.dtype}")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        found = sorted({repr(v) for v in np.unique(y[bad])[:5].tolist()})
        raise ValueError(
            f"{name} must hold only 0 (benign) and 1 (malignant); found {', '.join(found)} "
            f"({int(bad.sum())} value(s), first at index {int(np.flatnonzero(bad)[0])})"
        )
    return y.astype(np.int64)


def _as_probabilities(p: Any, n: int, name: str = "p_malignant") -> np.ndarray:
    try:
        arr = np.asarray(p, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be an array of probabilities: {exc}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one P(malignant) per test image), got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} values but there are {n} test labels")
    nonfinite = ~np.isfinite(arr)
    if nonfinite.any():
        raise ValueError(
            f"{name} contains {int(nonfinite.sum())} NaN/inf value(s), "
            f"first at index {int(np.flatnonzero(nonfinite)[0])}"
        )
    outside = (arr < 0.0) | (arr > 1.0)
    if outside.any():
        raise ValueError(
            f"{name} must be probabilities in [0, 1]; {int(outside.sum())} value(s) outside "
            f"(min {arr.min():.6g}, max {arr.max():.6g}, first at index {int(np.flatnonzero(outside)[0])})"
        )
    return arr


def _check_threshold(threshold: float) -> float:
    t = float(threshold)
    if not (0.0 <= t <= 1.0):
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    return t


def _id_kind(value: Any) -> str:
    """'number', 'str' or 'other': ids of one kind are numbered in sorted order, mixed ones by first appearance."""
    if isinstance(value, (bool, np.bool_, int, float, np.integer, np.floating)):
        return "number"
    if isinstance(value, str):  # np.str_ is a str
        return "str"
    return "other"


def _group_codes(groups: Any, n: int) -> tuple[np.ndarray, int]:
    """Integer code per image (0..G-1) and G.

    Ids of one kind (all numbers, or all strings) are numbered in sorted order, so
    the same ids give the same codes (and the same bootstrap) whether they come as
    a list, a typed array or an object array. Anything else (tuples, mixed kinds)
    is numbered in order of first appearance, with Python equality: ``1`` and
    ``"1"`` are two lesions, ``1`` and ``1.0`` one.
    """
    if groups is None:
        return np.arange(n), n
    if isinstance(groups, np.ndarray):
        if groups.ndim != 1:
            raise ValueError(f"groups must be 1-D (one lesion id per test image), got shape {groups.shape}")
        items = groups.tolist() if groups.dtype.kind == "O" else None
        arr = groups
    else:
        try:
            items = list(groups)
        except TypeError:
            raise ValueError(f"groups must be a sequence of lesion ids, got {type(groups).__name__}") from None
        arr = None
    length = len(items) if items is not None else arr.shape[0]
    if length != n:
        raise ValueError(f"groups has {length} ids but there are {n} test images")
    if items is not None:
        kinds = {_id_kind(g) for g in items}  # None is "other": the loop below names it
        if len(kinds) == 1 and kinds != {"other"}:
            arr = np.array(items)  # one kind: a typed array ('O' only for ints beyond int64)
        else:
            arr = None
    if arr is not None and arr.dtype.kind in "biufUS":
        if arr.dtype.kind == "f" and np.isnan(arr).any():
            raise ValueError("groups contains NaN; give every test image a lesion id (or its own image id)")
        uniq, codes = np.unique(arr, return_inverse=True)
        return codes.reshape(-1).astype(np.int64), int(uniq.shape[0])
    if items is None:
        items = arr.tolist()
    # mixed kinds, tuples, ...: number them in order of first appearance
    seen: dict[Any, int] = {}
    codes = np.empty(n, dtype=np.int64)
    for i, g in enumerate(items):
        if g is None:
            raise ValueError(f"groups[{i}] is None; give every test image a lesion id (or its own image id)")
        if isinstance(g, float) and math.isnan(g):
            raise ValueError("groups contains NaN; give every test image a lesion id (or its own image id)")
        try:
            codes[i] = seen.setdefault(g, len(seen))
        except TypeError:
            raise ValueError(f"groups[{i}] = {g!r} is not hashable") from None
    return codes, len(seen)


# ----------------------------------------------------------------------------- one vector


def _none_if_nan(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def _sens_at_spec_from_roc(fpr: np.ndarray, tpr: np.ndarray, spec: float) -> float:
    ok = (1.0 - fpr) >= spec - _SPEC_TOL
    return float(tpr[ok].max())  # the (0, 0) point always qualifies


def classification_metrics(y_true: Any, p_malignant: Any, threshold: float = 0.5) -> dict[str, float | None]:
    """Every metric in :data:`METRICS` for one probability vector (scikit-learn).

    ``sensitivity`` is the recall of class 1, ``specificity`` the recall of
    class 0, ``f1`` the F1 of class 1, each at ``p_malignant >= threshold``.
    ``sens_at_specXX`` is the highest sensitivity of any ROC threshold whose
    specificity is at least 0.XX. Metrics that are undefined for these labels
    are ``None``: AUC, balanced accuracy and sens_at_spec need both classes,
    sensitivity needs a malignant case, specificity a benign one, F1 a
    malignant case or a malignant prediction.
    """
    y = _as_labels(y_true)
    p = _as_probabilities(p_malignant, y.shape[0])
    t = _check_threshold(threshold)
    pred = (p >= t).astype(np.int64)
    has_pos, has_neg = bool(y.any()), bool((1 - y).any())

    out: dict[str, float | None] = {m: None for m in METRICS}
    out["accuracy"] = float(accuracy_score(y, pred))
    if has_pos:
        out["sensitivity"] = float(recall_score(y, pred, pos_label=1, labels=[0, 1], average="binary"))
    if has_neg:
        out["specificity"] = float(recall_score(y, pred, pos_label=0, labels=[0, 1], average="binary"))
    out["f1"] = _none_if_nan(f1_score(y, pred, pos_label=1, labels=[0, 1], average="binary", zero_division=np.nan))
    if has_pos and has_neg:
        out["balanced_accuracy"] = float(balanced_accuracy_score(y, pred))
        out["auc"] = float(roc_auc_score(y, p))
        fpr, tpr, _ = roc_curve(y, p, pos_label=1, drop_intermediate=False)
        for name, spec in _SENS_AT_SPEC.items():
            out[name] = _sens_at_spec_from_roc(fpr, tpr, spec)
    return out


# ----------------------------------------------------------------------------- bootstrap draws


def _draw_group_counts(n_groups: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_groups) multiplicities: each resample draws n_groups groups with replacement."""
    draws = rng.integers(0, n_groups, size=(n_boot, n_groups))
    flat = (draws + n_groups * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n_groups).reshape(n_boot, n_groups)


def grouped_bootstrap_counts(groups: Any, n_boot: int, rng: np.random.Generator | int | None) -> np.ndarray:
    """Lesion-grouped bootstrap as multiplicities: an ``(n_boot, n_images)`` int array.

    Each resample draws as many groups as there are, uniformly with
    replacement; every image of a group drawn ``c`` times gets count ``c``.
    ``evaluate_arms(..., seed=s)`` uses exactly
    ``grouped_bootstrap_counts(groups, n_boot, np.random.default_rng(s))``.
    """
    if groups is None:
        raise ValueError("groups is required: one lesion id per test image")
    codes, n_groups = _group_codes(groups, groups.shape[0] if isinstance(groups, np.ndarray) else len(groups))
    rng = np.random.default_rng(rng)
    return _draw_group_counts(n_groups, int(n_boot), rng)[:, codes]


def grouped_bootstrap_indices(
    groups: Any, n_boot: int, rng: np.random.Generator | int | None
) -> list[np.ndarray]:
    """The same resamples as :func:`grouped_bootstrap_counts`, as image-index arrays.

    Resample ``b`` is ``np.repeat(arange(n_images), counts[b])`` (sorted), so
    it is always a union of whole groups, each repeated as often as drawn.
    """
    counts = grouped_bootstrap_counts(groups, n_boot, rng)
    idx = np.arange(counts.shape[1])
    return [np.repeat(idx, row) for row in counts]


def seed_bootstrap_counts(n_seeds: int, n_boot: int, seed: int) -> np.ndarray:
    """The seed half of the two-way bootstrap: ``(n_boot, n_seeds)`` multiplicities of an arm's seed columns.

    Each resample draws ``n_seeds`` of the seeds uniformly with replacement.
    ``evaluate_arms(..., seed=s)`` uses exactly ``seed_bootstrap_counts(k, n_boot, s)``
    for every arm with ``k > 1`` seeds (one draw shared by all arms with the same
    ``k``, so their deltas are paired by seed), and all ones for ``k == 1``. The
    stream is its own (derived from ``s`` and ``k``), so the lesion resamples are
    those of ``grouped_bootstrap_counts(groups, n_boot, np.random.default_rng(s))``
    whatever the seed counts.
    """
    n_seeds, n_boot = int(n_seeds), int(n_boot)
    if n_seeds < 1:
        raise ValueError(f"n_seeds must be >= 1, got {n_seeds}")
    if n_seeds == 1:
        return np.ones((n_boot, 1), dtype=np.int64)
    rng = np.random.default_rng(derive_seed(seed, "bootstrap-seeds", n_seeds))
    return _draw_group_counts(n_seeds, n_boot, rng)


# ----------------------------------------------------------------------------- weighted metrics


class _SortedScores:
    """Per probability column: descending order and tie-block starts (shared by every resample)."""

    def __init__(self, y: np.ndarray, p: np.ndarray):
        self.order = np.argsort(-p, kind="stable")
        ps = p[self.order]
        self.starts = np.concatenate(([0], np.flatnonzero(np.diff(ps)) + 1))
        self.y_sorted = y[self.order].astype(np.float64)


def _weighted_metrics(
    y: np.ndarray,
    probs: np.ndarray,
    sorted_scores: Sequence[_SortedScores],
    weights: np.ndarray,
    threshold: float,
) -> dict[str, np.ndarray]:
    """Every metric for every (resample, column): arrays of shape (n_resamples, n_columns), NaN where undefined.

    ``probs`` is (n_images, n_columns); ``weights`` is (n_resamples, n_images)
    of integer multiplicities. Equal to :func:`classification_metrics` on the
    resampled images.
    """
    w = weights.astype(np.float64, copy=False)
    pos = y == 1
    wp, wn = w[:, pos], w[:, ~pos]
    n_pos, n_neg = wp.sum(axis=1)[:, None], wn.sum(axis=1)[:, None]
    pred = (probs >= threshold).astype(np.float64)
    tp = wp @ pred[pos]
    fp = wn @ pred[~pos]
    fn, tn = n_pos - tp, n_neg - fp

    out: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        out["accuracy"] = (tp + tn) / (n_pos + n_neg)
        sens = np.where(n_pos > 0, tp / n_pos, np.nan)
        spec = np.where(n_neg > 0, tn / n_neg, np.nan)
        out["sensitivity"], out["specificity"] = sens, spec
        out["balanced_accuracy"] = (sens + spec) / 2.0
        denom = 2.0 * tp + fp + fn
        out["f1"] = np.where(denom > 0, 2.0 * tp / denom, np.nan)

        both = ((n_pos > 0) & (n_neg > 0))[:, 0]
        n_res, n_col = w.shape[0], probs.shape[1]
        auc = np.full((n_res, n_col), np.nan)
        sas = {name: np.full((n_res, n_col), np.nan) for name in _SENS_AT_SPEC}
        if both.any():
            wb = w[both]
            npos_b, nneg_b = n_pos[both], n_neg[both]
            for j, ss in enumerate(sorted_scores):
                ws = wb[:, ss.order]
                pos_w = ws * ss.y_sorted
                pos_blk = np.add.reduceat(pos_w, ss.starts, axis=1)  # positives per tie block, descending score
                neg_blk = np.add.reduceat(ws - pos_w, ss.starts, axis=1)
                tps = np.cumsum(pos_blk, axis=1)
                fps = np.cumsum(neg_blk, axis=1)
                # Mann-Whitney with multiplicities: each negative beats-by-a-positive counts 1, ties 1/2
                auc[both, j] = (neg_blk * (tps - 0.5 * pos_blk)).sum(axis=1) / (npos_b[:, 0] * nneg_b[:, 0])
                tpr = tps / npos_b
                specificity = (nneg_b - fps) / nneg_b
                for name, target in _SENS_AT_SPEC.items():
                    # the ROC's (0, 0) point always qualifies, hence the floor of 0
                    ok = specificity >= target - _SPEC_TOL
                    sas[name][both, j] = np.where(ok, tpr, 0.0).max(axis=1)
        out["auc"] = auc
        out.update(sas)
    return out


# ----------------------------------------------------------------------------- arms


def _as_seed_matrix(arm: str, value: Any, n: int) -> np.ndarray:
    """(n_images, n_seeds) probabilities of one arm, validated."""
    if isinstance(value, np.ndarray) and value.ndim == 1:
        seeds = [value]  # one seed given as a bare vector
    elif isinstance(value, np.ndarray) and value.ndim == 2:
        seeds = list(value)
    else:
        try:
            seeds = list(value)
        except TypeError:
            raise ValueError(
                f"probabilities[{arm!r}] must be a list with one probability array per seed, got {type(value).__name__}"
            ) from None
        if seeds and all(np.ndim(s) == 0 for s in seeds):
            seeds = [np.asarray(seeds, dtype=np.float64)]  # one seed given as a flat list of floats
    if not seeds:
        raise ValueError(f"probabilities[{arm!r}] is empty: give one probability array per classifier seed")
    cols = [_as_probabilities(s, n, name=f"probabilities[{arm!r}][{k}]") for k, s in enumerate(seeds)]
    return np.stack(cols, axis=1)


def _plain(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _percentile_ci(values: np.ndarray) -> list[float] | None:
    if values.size == 0:
        return None
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def _bootstrap_p_value(deltas: np.ndarray) -> float | None:
    """Two-sided paired-bootstrap p: twice the smaller tail mass at 0, with the +1 correction, capped at 1.

    Consistent with the percentile CI: p < 0.05 (roughly) iff the 95 % CI excludes 0.
    """
    b = deltas.size
    if b == 0:
        return None
    below = (1 + int((deltas <= 0).sum())) / (1 + b)
    above = (1 + int((deltas >= 0).sum())) / (1 + b)
    return float(min(1.0, 2.0 * min(below, above)))


def evaluate_arms(
    y_true: Any,
    groups: Any,
    probabilities: Mapping[str, Sequence[np.ndarray]],
    reference: str | None = "real",
    n_boot: int = 1000,
    seed: int = 0,
    threshold: float = 0.5,
) -> dict[str, dict[str, Any]]:
    """Metrics per arm with lesion × seed bootstrap CIs and paired deltas to ``reference``.

    ``probabilities[arm]`` holds one P(malignant) array per classifier seed,
    all on the same test images as ``y_true``; ``groups`` gives each test
    image's lesion id (``None``: every image is its own group). For each arm
    (in the mapping's order)::

        {<metric>: mean over seeds, <metric>_std: sample std over seeds (None for one seed),
         <metric>_ci95: [lo, hi], per_seed: [classification_metrics(...) per seed],
         n_seeds, n_test, n_test_lesions, n_boot, n_boot_valid: {metric: int},
         ci_resamples: "lesions" (one seed: the CI is conditional on that one trained model)
                       or "lesions+seeds",
         delta_vs_<reference>: {metric: {value, ci95, p_value, n_boot_valid}}}   # non-reference arms

    In each of ``n_boot`` resamples, whole lesions are drawn with replacement
    (:func:`grouped_bootstrap_counts`) and, for an arm with K > 1 seeds, K seeds
    with replacement (:func:`seed_bootstrap_counts`); a metric is computed per
    drawn seed on the resampled images and averaged over the drawn seeds; the CI
    is the 2.5/97.5 percentile of those averages. Deltas use the same lesion
    resamples for both arms, and the same seed draws when both have the same K
    (seed k of each arm is paired), independent ones otherwise. Resamples where
    a metric is undefined for a drawn seed are skipped for it. Deterministic
    for ``seed``.
    """
    y = _as_labels(y_true)
    n = y.shape[0]
    t = _check_threshold(threshold)
    n_boot = int(n_boot)
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    if not isinstance(probabilities, Mapping) or not probabilities:
        raise ValueError("probabilities must be a non-empty mapping {arm name: [one probability array per seed]}")
    if reference is not None and reference not in probabilities:
        raise ValueError(
            f"reference arm {reference!r} is not among the arms: {', '.join(map(repr, probabilities))}"
        )
    codes, n_groups = _group_codes(groups, n)

    arms = list(probabilities)
    mats = {arm: _as_seed_matrix(arm, probabilities[arm], n) for arm in arms}
    # all (arm, seed) columns side by side, so each resample is scored in one pass
    probs = np.concatenate([mats[a] for a in arms], axis=1)
    spans, start = {}, 0
    for a in arms:
        spans[a] = slice(start, start + mats[a].shape[1])
        start += mats[a].shape[1]

    # ---- point estimates (scikit-learn)
    per_seed = {a: [classification_metrics(y, mats[a][:, k], t) for k in range(mats[a].shape[1])] for a in arms}

    def point(a: str, m: str) -> float | None:
        vals = [d[m] for d in per_seed[a]]
        return None if any(v is None for v in vals) else float(np.mean(vals))

    # ---- bootstrap: mean over each arm's drawn seeds, per resample and metric
    boot = {a: {m: np.empty(n_boot) for m in METRICS} for a in arms}
    if n_boot:
        rng = np.random.default_rng(seed)
        group_counts = _draw_group_counts(n_groups, n_boot, rng)
        # one seed draw per seed count K, shared by the arms with that K (paired by seed)
        seed_counts = {k: seed_bootstrap_counts(k, n_boot, seed) for k in sorted({mats[a].shape[1] for a in arms})}
        sorted_scores = [_SortedScores(y, probs[:, j]) for j in range(probs.shape[1])]
        chunk = max(1, _CHUNK_ELEMENTS // max(n, 1))
        for lo in range(0, n_boot, chunk):
            hi = min(n_boot, lo + chunk)
            res = _weighted_metrics(y, probs, sorted_scores, group_counts[lo:hi][:, codes], t)
            for a in arms:
                k = mats[a].shape[1]
                drawn_counts = seed_counts[k][lo:hi].astype(np.float64)
                drawn = drawn_counts > 0
                for m in METRICS:
                    cols = res[m][:, spans[a]]
                    if k == 1:
                        boot[a][m][lo:hi] = cols[:, 0]
                        continue
                    mean = (np.where(drawn, cols, 0.0) * drawn_counts).sum(axis=1) / k
                    # NaN in a drawn seed -> resample skipped for this metric (an undrawn seed does not count)
                    mean[(np.isnan(cols) & drawn).any(axis=1)] = np.nan
                    boot[a][m][lo:hi] = mean

    results: dict[str, dict[str, Any]] = {}
    for a in arms:
        k = mats[a].shape[1]
        r: dict[str, Any] = {}
        for m in METRICS:
            r[m] = point(a, m)
        for m in METRICS:
            vals = [d[m] for d in per_seed[a]]
            r[f"{m}_std"] = None if k < 2 or any(v is None for v in vals) else float(np.std(vals, ddof=1))
        n_valid = {}
        for m in METRICS:
            valid = boot[a][m][np.isfinite(boot[a][m])]
            n_valid[m] = int(valid.size)
            r[f"{m}_ci95"] = _percentile_ci(valid)
        r["per_seed"] = per_seed[a]
        r["n_seeds"] = k
        r["n_test"] = int(n)
        r["n_test_lesions"] = int(n_groups)
        r["n_boot"] = n_boot
        r["n_boot_valid"] = n_valid
        r["ci_resamples"] = "lesions+seeds" if k > 1 else "lesions"
        if reference is not None and a != reference:
            delta: dict[str, Any] = {}
            for m in METRICS:
                pa, pr = point(a, m), point(reference, m)
                d = boot[a][m] - boot[reference][m]
                d = d[np.isfinite(d)]
                delta[m] = {
                    "value": None if pa is None or pr is None else _plain(pa - pr),
                    "ci95": _percentile_ci(d),
                    "p_value": _bootstrap_p_value(d),
                    "n_boot_valid": int(d.size),
                }
            r[f"delta_vs_{reference}"] = delta
        results[a] = r
    return results
