"""Protocol step 6: how close synthetic images are to real ones, and whether they copy the train pool.

Features are extracted once per image set; FID/KID/precision/recall are computed
overall and per class between synthetic images and the real test set, beside the
same numbers for real train images vs the real test set (the floor a perfect
generator would reach with this N and this extractor). relative FID = FID / floor.

Both sides of each comparison are drawn at the same N and the same class mix, so a
generator that samples the real class-conditional distributions gets a relative
FID of about 1:
  * overall: the synthetic set (class-balanced prompts by default) is subsampled
    per class to the real TEST set's class proportions, as large as the synthetic
    images and the train pool allow; the floor's real train images are drawn with
    the same per-class counts. Without it a balanced synthetic set is penalised for
    its class mix (relative FID 2.3 for a perfect generator at 20 % prevalence);
  * per class: synthetic and floor images are both drawn at min(n synthetic, n train)
    of the class (FID is biased by N: a floor at a smaller N than the synthetic side
    made a perfect generator look better than real, relative FID 0.6).
The subsamples are seeded with `derive_seed(seed, ...)` and recorded (n_synthetic is
the count used, n_synthetic_total the count generated, n_synthetic_per_class, class_matched).

Memorization (dermabench/metrics/memorization.py) is calibrated on the VALIDATION
split: held-out real images of the same dataset (the test set may be another
dataset), with a threshold per class.

With a `cache_dir` (the protocol passes `<out>/.cache/features/`), the features of
each image set are cached on disk by pixels + extractor + image size
(dermabench/feature_cache.py): a second run on the same split with the same
extractor extracts nothing for the real train pool and test set.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dermabench.api import LABEL_NAMES, FeatureExtractor, Progress, RunContext, Sample
from dermabench.errors import PluginError
from dermabench.feature_cache import FeatureCache
from dermabench.generation import plugin_call
from dermabench.metrics.fidelity import fid_from_statistics, fid_statistics, fidelity_metrics, kid
from dermabench.metrics.memorization import memorization, nearest_neighbours, unit_rows
from dermabench.seeding import derive_seed

CLOSEST_PAIRS_SHOWN = 8


def extract(
    extractor: FeatureExtractor,
    samples: Sequence[Sample],
    context: RunContext,
    what: str,
    cache: FeatureCache | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """Checked float64 features (n, dim) of the samples' images; from `cache` when it holds them."""
    images = [s.image for s in samples]

    def compute() -> np.ndarray:
        with plugin_call("extractor", extractor.name, "extract"):
            features = np.asarray(extractor.extract(images, context), dtype=np.float64)
        if features.ndim != 2 or features.shape[0] != len(samples):
            raise PluginError(f"extractor '{extractor.name}' returned features of shape {features.shape} for {what}")
        if not np.all(np.isfinite(features)):
            raise PluginError(f"extractor '{extractor.name}' returned NaN or inf features for {what}")
        return features

    if cache is None:
        return compute()
    with plugin_call("extractor", extractor.name, "describe"):
        describe = _describe(extractor)
    features, hit = cache.get_or_compute(extractor, describe, images, context.image_size, compute)
    if hit and progress is not None:
        progress.log(f"{what}: {len(features)} {extractor.name} features from the cache")
    return features


def compare(real: np.ndarray, synthetic: np.ndarray, floor_real: np.ndarray, seed: int) -> dict:
    """Synthetic-vs-real numbers beside the real-vs-real FID floor at the same N."""
    if len(real) < 2 or len(synthetic) < 2 or len(floor_real) < 2:
        return {"fid": None, "n_real": len(real), "n_synthetic": len(synthetic), "note": "fewer than 2 images"}
    real_statistics = fid_statistics(real)  # shared by both distances
    numbers = fidelity_metrics(real, synthetic, seed=seed, real_statistics=real_statistics)
    floor = fid_from_statistics(*fid_statistics(floor_real), *real_statistics)
    numbers["fid_real_floor"] = floor
    numbers["n_real_floor"] = len(floor_real)
    numbers["relative_fid"] = numbers["fid"] / floor if floor > 0 else None
    # the same subset size as the synthetic KID, so the two read on one scale
    floor_kid = kid(real, floor_real, subset_size=numbers["kid_subset_size"], seed=seed)
    numbers["kid_real_floor"], numbers["kid_real_floor_std"] = floor_kid["kid_mean"], floor_kid["kid_std"]
    return numbers


def subsample(indices: np.ndarray, n: int, seed: int, *salt: int | str) -> np.ndarray:
    """`n` of `indices` drawn without replacement, in their original order; deterministic for (seed, salt)."""
    if n >= len(indices):
        return indices
    rng = np.random.default_rng(derive_seed(seed, *salt))
    return indices[np.sort(rng.choice(len(indices), size=n, replace=False))]


def class_matched_counts(test_counts: dict, synthetic_counts: dict, train_counts: dict) -> dict | None:
    """Per-class counts in the test set's proportions, as large as the synthetic and train counts allow.

    None when a class of the test set has no synthetic or no train image (the mix cannot be matched).
    """
    present = [c for c, n in test_counts.items() if n > 0]
    if not present or any(min(synthetic_counts.get(c, 0), train_counts.get(c, 0)) == 0 for c in present):
        return None
    caps = {c: min(synthetic_counts[c], train_counts[c]) for c in present}
    scale = min(caps[c] / test_counts[c] for c in present)
    return {c: (min(caps[c], round(scale * test_counts[c])) if c in caps else 0) for c in test_counts}


def fidelity_and_memorization(
    extractor: FeatureExtractor,
    context: RunContext,
    train_pool: Sequence[Sample],
    test: Sequence[Sample],
    synthetic: Sequence[Sample],
    seed: int,
    progress: Progress,
    cache_dir: Path | None = None,
    val: Sequence[Sample] | None = None,
) -> tuple[dict, dict, list]:
    """Returns (fidelity, memorization, closest pairs) for the result JSON; the closest pairs as indices into
    `synthetic` and `train_pool` (`closest_rows` makes them grid rows).

    `cache_dir`: where features are cached across runs (None: no cache).
    `val`: held-out real images of the train pool's dataset (the validation split) that calibrate the
    near-copy threshold. None falls back to the test set (as protocol version 1 did; wrong for a
    separate test dataset), and `memorization["calibration_set"]` says which was used.
    """
    cache = FeatureCache(cache_dir) if cache_dir is not None else None
    train_features = extract(extractor, train_pool, context, "the real train pool", cache, progress)
    test_features = extract(extractor, test, context, "the real test set", cache, progress)
    synthetic_features = extract(extractor, synthetic, context, "the synthetic images", cache, progress)
    train_labels = np.array([s.label for s in train_pool], dtype=np.int64)
    test_labels = np.array([s.label for s in test], dtype=np.int64)
    synthetic_labels = np.array([s.label for s in synthetic], dtype=np.int64)
    if val is not None and len(val) > 0:
        calibration_set = "validation"
        calibration_features = extract(extractor, val, context, "the real validation set", cache, progress)
        calibration_labels = np.array([s.label for s in val], dtype=np.int64)
    else:
        calibration_set, calibration_features, calibration_labels = "test", test_features, test_labels

    def where(labels: np.ndarray, label: int) -> np.ndarray:
        return np.flatnonzero(labels == label)

    def counts(labels: np.ndarray) -> dict:
        return {label: int((labels == label).sum()) for label in LABEL_NAMES}

    # overall: synthetic and floor at the test set's class mix, at one N (FID is biased by N and by the mix)
    matched = class_matched_counts(counts(test_labels), counts(synthetic_labels), counts(train_labels))
    if matched is not None:
        synthetic_index = np.concatenate([
            subsample(where(synthetic_labels, c), n, seed, "fidelity-synthetic", c) for c, n in matched.items()
        ])  # fmt: skip
        floor_index = np.concatenate([
            subsample(where(train_labels, c), n, seed, "fidelity-floor", c) for c, n in matched.items()
        ])  # fmt: skip
        per_class_used = {LABEL_NAMES[c]: n for c, n in matched.items()}
        note = "synthetic and floor images drawn per class at the real test set's class proportions"
    else:  # a test class without synthetic (or train) images: the generator is judged on what it made
        synthetic_index = np.arange(len(synthetic))
        floor_index = subsample(np.arange(len(train_pool)), len(synthetic), seed, "fidelity-floor")
        per_class_used = {LABEL_NAMES[c]: n for c, n in counts(synthetic_labels).items()}
        note = ("not class-matched: a class of the test set has no synthetic or no train image; all synthetic "
                "images vs a floor of as many train images at the train pool's mix")  # fmt: skip
    overall = compare(test_features, synthetic_features[synthetic_index], train_features[floor_index], seed)
    fidelity = {
        "extractor": extractor.name,
        "extractor_info": _describe(extractor),
        **overall,
        "n_synthetic_total": len(synthetic),
        "n_synthetic_per_class": per_class_used,
        "class_matched": matched is not None,
        "note": f"{overall['note']}; {note}" if overall.get("note") else note,
        "per_class": {},
    }
    # per class: synthetic and floor at one N, min(n synthetic, n train) of the class
    for label, name in LABEL_NAMES.items():
        synthetic_c, train_c = where(synthetic_labels, label), where(train_labels, label)
        n = min(len(synthetic_c), len(train_c))
        fidelity["per_class"][name] = {
            **compare(
                test_features[test_labels == label],
                synthetic_features[subsample(synthetic_c, n, seed, "fidelity-class-synthetic", label)],
                train_features[subsample(train_c, n, seed, "fidelity-class-floor", label)],
                seed,
            ),
            "n_synthetic_total": len(synthetic_c),
        }

    found = memorization(
        synthetic_features, train_features, calibration_features,
        synthetic_labels=synthetic_labels, calibration_labels=calibration_labels,
    )  # fmt: skip
    nearest, distances = found.pop("nearest_train_index"), found.pop("distances")
    memo = {
        "extractor": extractor.name,
        "calibration_set": calibration_set,
        **{k: v for k, v in found.items() if not isinstance(v, np.ndarray)},
    }
    # the real test images' own distance to the train pool, kept as before (a diagnostic, not the yardstick)
    _, test_distances = nearest_neighbours(unit_rows(test_features, "test"), unit_rows(train_features, "train"))
    memo["n_test"], memo["test_median_distance"] = len(test), float(np.median(test_distances))
    order = np.argsort(distances)[:CLOSEST_PAIRS_SHOWN]
    closest = {"synthetic": [int(i) for i in order], "nearest_train": [int(nearest[i]) for i in order]}
    progress.log(
        f"FID {fidelity['fid']:.3f} (floor {fidelity['fid_real_floor']:.3f}), "
        f"near-copy rate {memo['near_copy_rate']:.3f}"
    )
    return fidelity, memo, closest


def closest_rows(closest: dict, synthetic: Sequence[Sample], train_pool: Sequence[Sample]) -> list:
    """The grid rows of the closest pairs: the synthetic images and, under each, its nearest train image."""
    return [
        ("synthetic", [synthetic[i].image for i in closest["synthetic"]]),
        ("nearest train", [train_pool[i].image for i in closest["nearest_train"]]),
    ]


def _describe(extractor: FeatureExtractor) -> dict:
    describe = getattr(extractor, "describe", None)
    return dict(describe()) if callable(describe) else {"name": extractor.name, "options": extractor.options}
