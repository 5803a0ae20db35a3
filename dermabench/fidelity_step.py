"""Protocol step 6: how close synthetic images are to real ones, and whether they copy the train pool.

Features are extracted once per image set; FID/KID/precision/recall are computed
overall and per class between synthetic images and the real test set, beside the
same numbers for real train images vs the real test set (the floor a perfect
generator would reach with this N and this extractor). relative FID = FID / floor.

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
from dermabench.metrics.memorization import memorization
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


def fidelity_and_memorization(
    extractor: FeatureExtractor,
    context: RunContext,
    train_pool: Sequence[Sample],
    test: Sequence[Sample],
    synthetic: Sequence[Sample],
    seed: int,
    progress: Progress,
    cache_dir: Path | None = None,
) -> tuple[dict, dict, list]:
    """Returns (fidelity, memorization, closest pairs) for the result JSON; the closest pairs as indices into
    `synthetic` and `train_pool` (`closest_rows` makes them grid rows).

    `cache_dir`: where features are cached across runs (None: no cache).
    """
    cache = FeatureCache(cache_dir) if cache_dir is not None else None
    train_features = extract(extractor, train_pool, context, "the real train pool", cache, progress)
    test_features = extract(extractor, test, context, "the real test set", cache, progress)
    synthetic_features = extract(extractor, synthetic, context, "the synthetic images", cache, progress)
    train_labels = np.array([s.label for s in train_pool])
    test_labels = np.array([s.label for s in test])
    synthetic_labels = np.array([s.label for s in synthetic])

    # the floor uses as many real train images as there are synthetic ones (FID is biased by N)
    rng = np.random.default_rng(derive_seed(seed, "fidelity-floor"))

    def floor_sample(features: np.ndarray, n: int) -> np.ndarray:
        return features[np.sort(rng.choice(len(features), size=min(n, len(features)), replace=False))]

    fidelity = {
        "extractor": extractor.name,
        "extractor_info": _describe(extractor),
        **compare(test_features, synthetic_features, floor_sample(train_features, len(synthetic)), seed),
        "per_class": {},
    }
    for label, name in LABEL_NAMES.items():
        fidelity["per_class"][name] = compare(
            test_features[test_labels == label],
            synthetic_features[synthetic_labels == label],
            floor_sample(train_features[train_labels == label], int((synthetic_labels == label).sum())),
            seed,
        )

    found = memorization(synthetic_features, train_features, test_features)
    nearest, distances = found.pop("nearest_train_index"), found.pop("distances")
    memo = {"extractor": extractor.name, **{k: v for k, v in found.items() if not isinstance(v, np.ndarray)}}
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
