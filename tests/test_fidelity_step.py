"""Protocol step 6 on fixtures: per-class numbers, the feature cache, copy / noise generators."""

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

import dermabench
from dermabench.api import LABEL_NAMES, Progress, RunContext, Sample
from dermabench.fidelity_step import closest_rows, fidelity_and_memorization
from dermabench.metrics.fidelity import fidelity_metrics


class PooledColours(dermabench.FeatureExtractor):
    """A cheap extractor: mean colour of each cell of a bins × bins grid. Counts its calls."""

    name = "pooled-colours"

    def __init__(self, **options):
        super().__init__(**options)
        self.bins = int(options.get("bins", 4))
        self.calls = []

    def describe(self):
        return {"extractor": self.name, "bins": self.bins}

    def extract(self, images, context):
        self.calls.append(len(images))
        arr = np.stack([np.asarray(im, dtype=np.float64) for im in images]) / 255.0
        n, h, w, _ = arr.shape
        b = self.bins
        return arr.reshape(n, b, h // b, b, w // b, 3).mean(axis=(2, 4)).reshape(n, -1)


def _samples(n, seed, size=32):
    """Blurred coloured blobs; malignant (label 1) ones darker and larger."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = i % 2
        skin = rng.uniform([170, 120, 100], [240, 190, 160])
        img = Image.fromarray(np.clip(skin + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        cx, cy = rng.uniform(0.3, 0.7, 2) * size
        r = rng.uniform(0.1, 0.2) * size * (1.5 if label else 1.0)
        colour = tuple(int(c) for c in rng.uniform([40, 20, 10], [150, 100, 80]) * (0.6 if label else 1.0))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
        out.append(Sample(img, label, meta={"image_id": f"{seed}-{i}"}))
    return out


@pytest.fixture(scope="module")
def sets():
    return _samples(60, 1), _samples(40, 2), _samples(30, 3)  # train pool, test, synthetic


def _step(extractor, sets, cache_dir=None, image_size=32):
    train, test, synthetic = sets
    return fidelity_and_memorization(
        extractor, RunContext(image_size=image_size), train, test, synthetic, 0, Progress(), cache_dir=cache_dir
    )


def test_per_class_numbers_are_the_metrics_of_each_class(sets):
    _, test, synthetic = sets
    extractor = PooledColours()
    fidelity, memorization, _ = _step(extractor, sets)
    features = {"test": extractor.extract([s.image for s in test], None)}
    features["synthetic"] = extractor.extract([s.image for s in synthetic], None)
    overall_keys = set(fidelity) - {"extractor", "extractor_info", "per_class"}
    assert set(fidelity["per_class"]) == {"benign", "malignant"}
    for label, name in LABEL_NAMES.items():
        numbers = fidelity["per_class"][name]
        assert set(numbers) == overall_keys
        real = features["test"][[s.label == label for s in test]]
        synth = features["synthetic"][[s.label == label for s in synthetic]]
        expected = fidelity_metrics(real, synth, seed=0)
        for key in ("fid", "kid_mean", "kid_std", "kid_subset_size", "precision", "recall", "n_real", "n_synthetic"):
            assert numbers[key] == expected[key], key
        assert numbers["n_real"] == sum(s.label == label for s in test)
        assert numbers["n_real_floor"] == numbers["n_synthetic"] == sum(s.label == label for s in synthetic)
        assert numbers["relative_fid"] == pytest.approx(numbers["fid"] / numbers["fid_real_floor"])
    assert fidelity["per_class"]["benign"]["fid"] != fidelity["per_class"]["malignant"]["fid"]
    assert fidelity["extractor_info"] == {"extractor": "pooled-colours", "bins": 4}
    assert memorization["extractor"] == "pooled-colours" and memorization["n"] == len(synthetic)


def test_second_call_extracts_nothing_and_gives_the_same_numbers(sets, tmp_path):
    cache = tmp_path / "features"
    first = PooledColours()
    out1 = _step(first, sets, cache)
    assert first.calls == [60, 40, 30]
    assert len(list(cache.glob("pooled-colours-*.npy"))) == 3

    second = PooledColours()
    out2 = _step(second, sets, cache)
    assert second.calls == []  # real train pool, real test and synthetic images all from the cache
    assert out2[0] == out1[0] and out2[1] == out1[1]

    without_cache = _step(PooledColours(), sets)
    assert without_cache[0] == out1[0]


def test_another_extractor_setting_or_image_size_misses_the_cache(sets, tmp_path):
    cache = tmp_path / "features"
    _step(PooledColours(), sets, cache)

    other_bins = PooledColours(bins=2)
    _step(other_bins, sets, cache)
    assert other_bins.calls == [60, 40, 30]

    other_size = PooledColours()
    _step(other_size, sets, cache, image_size=64)
    assert other_size.calls == [60, 40, 30]

    train, test, synthetic = sets
    changed = PooledColours()
    _step(changed, (train[:-1], test, synthetic), cache)  # one image fewer in the train pool
    assert changed.calls == [59]


def test_a_damaged_cache_entry_is_recomputed(sets, tmp_path):
    cache = tmp_path / "features"
    reference = _step(PooledColours(), sets, cache)
    for path in cache.glob("*.npy"):
        path.write_bytes(b"not an array")
    again = PooledColours()
    assert _step(again, sets, cache)[0] == reference[0]
    assert again.calls == [60, 40, 30]


def test_float32_features_are_stored_as_float32_and_read_back_exactly(tmp_path):
    from dermabench.feature_cache import FeatureCache

    cache = FeatureCache(tmp_path)
    exact = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32).astype(np.float64)
    cache.store(tmp_path / "a.npy", exact)
    assert np.load(tmp_path / "a.npy").dtype == np.float32
    np.testing.assert_array_equal(cache.load(tmp_path / "a.npy", 5), exact)
    precise = exact + 1e-12
    cache.store(tmp_path / "b.npy", precise)
    np.testing.assert_array_equal(cache.load(tmp_path / "b.npy", 5), precise)
    assert cache.load(tmp_path / "b.npy", 4) is None and not (tmp_path / "b.npy").exists()


def test_a_copying_generator_is_flagged_and_a_noise_generator_is_not(tmp_path):
    """Through the real offline extractor: mirrored train images vs uniform noise (real features cached once)."""
    from dermabench_plugins.efficientnet_lite0 import EfficientNetLite0

    train, test = _samples(40, 11, size=64), _samples(40, 12, size=64)
    mirrored = [Sample(s.image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), s.label) for s in train[:20]]
    rng = np.random.default_rng(0)
    noise = [Sample(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), i % 2) for i in range(20)]
    extractor = EfficientNetLite0(input_size=64)

    _, copied, closest = _step(extractor, (train, test, mirrored), tmp_path, image_size=64)
    assert copied["near_copy_rate"] > 0.5  # an honest generator lands near the 5 % quantile
    # the closest-pairs grid shows each copy beside the train image it came from (mirrored[i] copies train[i])
    pairs = list(zip(closest["synthetic"], closest["nearest_train"]))
    assert sum(i == j for i, j in pairs) >= 0.75 * len(pairs)
    rows = closest_rows(closest, mirrored, train)
    assert [image for image in rows[1][1]] == [train[j].image for j in closest["nearest_train"]]

    fidelity, honest, _ = _step(extractor, (train, test, noise), tmp_path, image_size=64)
    assert honest["near_copy_rate"] < 0.1
    assert fidelity["fid"] > 2 * fidelity["fid_real_floor"]
    # noise is far from real lesions by KID too; real train vs real test is close (same subset size)
    assert fidelity["kid_mean"] > 5 * max(fidelity["kid_real_floor"], 1e-4)
    assert fidelity["kid_real_floor_std"] >= 0
