"""FID / KID / precision-recall on torch-fidelity, checked against independent NumPy/SciPy math; memorization."""

import numpy as np
import pytest
import scipy.linalg

from dermabench.metrics.fidelity import (
    fid_from_statistics,
    fid_statistics,
    fidelity_metrics,
    kid,
    precision_recall,
)
from dermabench.metrics.memorization import ARRAY_KEYS, memorization


def _gaussians(n1=400, n2=300, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n1, dim)) @ rng.standard_normal((dim, dim)) * 0.3 + 1.0
    b = rng.standard_normal((n2, dim)) @ rng.standard_normal((dim, dim)) * 0.35 + 1.2
    return a, b


def _fid_scipy(x, y):
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _kid_numpy(x, y):
    """Unbiased MMD² with k(a, b) = (a·b / dim + 1)³, cross term over all m² pairs (Bińkowski et al.)."""
    m, d = len(x), x.shape[1]

    def k(a, b):
        return (a @ b.T / d + 1.0) ** 3

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()
    )


def test_fid_matches_scipy_sqrtm():
    real, synth = _gaussians()
    out = fidelity_metrics(real, synth)
    assert out["fid"] == pytest.approx(_fid_scipy(synth, real), rel=1e-6)
    assert fid_from_statistics(*fid_statistics(real), *fid_statistics(synth)) == pytest.approx(out["fid"], rel=1e-9)


def test_kid_matches_numpy_mmd_on_full_sets_and_on_subsets():
    real, synth = _gaussians(n1=200, n2=200)
    out = fidelity_metrics(real, synth)  # N = 200 < 1000: subset = whole set, one subset
    assert out["kid_subset_size"] == 200 and out["kid_subsets"] == 1 and out["kid_std"] == 0.0
    assert out["kid_mean"] == pytest.approx(_kid_numpy(synth, real), rel=1e-6)

    # subsets: torch-fidelity draws synthetic then real indices from RandomState(seed), per subset
    real, synth = _gaussians(n1=150, n2=120)
    got = kid(real, synth, subset_size=50, subsets=5, seed=3)
    rs = np.random.RandomState(3)
    ref = []
    for _ in range(5):
        s = synth[rs.choice(len(synth), 50, replace=False)]
        r = real[rs.choice(len(real), 50, replace=False)]
        ref.append(_kid_numpy(s, r))
    assert got["kid_mean"] == pytest.approx(np.mean(ref), rel=1e-6)
    assert got["kid_std"] == pytest.approx(np.std(ref), rel=1e-6)


def test_kid_equals_torch_fidelitys_own_subset_loop():
    # the kernels are computed once and indexed per subset: the subsets, the estimator and the numbers stay
    # torch-fidelity's
    import torch
    from torch_fidelity.metric_kid import kid_features_to_metric

    real, synth = _gaussians(n1=160, n2=130)
    got = kid(real, synth, subset_size=90, subsets=12, seed=7)
    ref = kid_features_to_metric(torch.from_numpy(synth), torch.from_numpy(real), kid_subsets=12,
                                 kid_subset_size=90, rng_seed=7, verbose=False)
    assert got["kid_mean"] == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-9)
    assert got["kid_std"] == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-9)


def test_kid_adapts_subset_size_to_small_n_and_records_it():
    real, synth = _gaussians(n1=60, n2=45)
    out = fidelity_metrics(real, synth)
    assert out["kid_subset_size"] == 45 and out["kid_subsets"] == 100
    assert out["n_real"] == 60 and out["n_synthetic"] == 45
    assert fidelity_metrics(real, synth, kid_subset_size=10)["kid_subset_size"] == 10
    assert fidelity_metrics(real, synth, kid_subset_size=5000)["kid_subset_size"] == 45


def test_deterministic_and_plain_types():
    real, synth = _gaussians()
    a, b = fidelity_metrics(real, synth, seed=1), fidelity_metrics(real, synth, seed=1)
    assert a == b
    for key in ("fid", "kid_mean", "kid_std", "precision", "recall"):
        assert type(a[key]) is float
    for key in ("kid_subset_size", "kid_subsets", "n_real", "n_synthetic", "prc_neighborhood"):
        assert type(a[key]) is int


def test_identical_sets_give_fid_about_zero():
    real, _ = _gaussians()
    out = fidelity_metrics(real, real.copy())
    assert abs(out["fid"]) < 1e-6
    # the unbiased estimator (cross term over all m² pairs, diagonal included) is slightly
    # negative for identical sets, and exactly what the independent formula gives
    assert out["kid_mean"] <= 0
    assert out["kid_mean"] == pytest.approx(_kid_numpy(real, real), rel=1e-6)
    assert out["precision"] == 1.0 and out["recall"] == 1.0


@pytest.mark.parametrize(("n", "dim"), [(30, 64), (100, 128), (400, 32)])
def test_fid_of_a_set_against_itself_is_never_negative(n, dim):
    """N < dim: the trace terms cancel to about -1.5e-6 in floating point; a distance is clipped at 0."""
    for seed in range(3):
        mu, sigma = fid_statistics(np.random.default_rng(seed).standard_normal((n, dim)))
        fid = fid_from_statistics(mu, sigma, mu, sigma)
        assert 0.0 <= fid < 1e-9
        assert fidelity_metrics(np.random.default_rng(seed).standard_normal((n, dim)),
                                np.random.default_rng(seed).standard_normal((n, dim)))["fid"] >= 0.0  # fmt: skip


def test_precision_and_recall_roles():
    rng = np.random.default_rng(0)
    real = rng.standard_normal((600, 8))
    tight = 0.2 * rng.standard_normal((300, 8))  # a tight subset of the real distribution: mode collapse
    out = fidelity_metrics(real, tight)
    assert out["precision"] > 0.9  # synthetic samples lie inside the real manifold
    assert out["recall"] < 0.2  # most real samples are not covered by the synthetic one
    broad = 4.0 * rng.standard_normal((300, 8))  # covers everything, mostly off the real manifold
    p, r = precision_recall(real, broad)
    assert p < 0.3 and r > 0.9


def test_small_n_and_errors():
    real, synth = _gaussians(n1=3, n2=2, dim=4)
    out = fidelity_metrics(real, synth)
    assert out["prc_neighborhood"] == 1 and out["kid_subset_size"] == 2
    with pytest.raises(ValueError, match="at least 2"):
        fidelity_metrics(real, synth[:1])
    with pytest.raises(ValueError, match="at least 2"):
        fid_statistics(real[:1])
    with pytest.raises(ValueError, match="dims differ"):
        fidelity_metrics(real, np.zeros((5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        fidelity_metrics(real, np.full((5, 4), np.nan))


def test_memorization_flags_a_copier_not_an_independent_sample():
    rng = np.random.default_rng(0)
    dim = 64
    centre = rng.standard_normal(dim)

    def draw(n):
        return centre + rng.standard_normal((n, dim))

    train, test, independent = draw(1000), draw(400), draw(400)
    copies_of = rng.choice(len(train), 400, replace=False)
    copier = train[copies_of] + 1e-3 * rng.standard_normal((400, dim))

    honest = memorization(independent, train, test, quantile=0.05)
    assert honest["near_copy_rate"] < 0.15
    copied = memorization(copier, train, test, quantile=0.05)
    assert copied["near_copy_rate"] == 1.0
    np.testing.assert_array_equal(copied["nearest_train_index"], copies_of)
    assert copied["threshold"] == honest["threshold"] and copied["threshold_quantile"] == 0.05
    assert copied["n"] == 400 and copied["distances"].shape == (400,)
    assert set(ARRAY_KEYS) <= set(copied)
    plain = {k: v for k, v in copied.items() if k not in ARRAY_KEYS}
    assert not any(isinstance(v, np.ndarray) for v in plain.values())


def test_memorization_chunking_matches_brute_force(monkeypatch):
    import dermabench.metrics.memorization as mem

    rng = np.random.default_rng(1)
    s, tr, te = rng.standard_normal((37, 16)), rng.standard_normal((53, 16)), rng.standard_normal((11, 16))
    full = memorization(s, tr, te)
    monkeypatch.setattr(mem, "_CHUNK_BYTES", 8 * 53 * 5)  # 5 rows per chunk
    chunked = memorization(s, tr, te)
    np.testing.assert_array_equal(full["nearest_train_index"], chunked["nearest_train_index"])
    sn = s / np.linalg.norm(s, axis=1, keepdims=True)
    tn = tr / np.linalg.norm(tr, axis=1, keepdims=True)
    brute = 1 - (sn @ tn.T).max(axis=1)
    np.testing.assert_allclose(chunked["distances"], brute, atol=1e-12)
    with pytest.raises(ValueError):
        memorization(s, tr, te, quantile=1.5)


def test_memorization_flags_flipped_training_images_through_the_real_extractor():
    from PIL import Image, ImageDraw, ImageFilter

    from dermabench_plugins.efficientnet_lite0 import EfficientNetLite0

    def lesion(seed, size=64):
        rng = np.random.default_rng(seed)
        skin = rng.uniform([170, 120, 100], [240, 190, 160])
        img = Image.fromarray(np.clip(skin + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(rng.integers(1, 4)):
            cx, cy = rng.uniform(0.25, 0.75, 2) * size
            rx, ry = rng.uniform(0.08, 0.3, 2) * size
            colour = tuple(int(c) for c in rng.uniform([40, 20, 10], [150, 100, 80]))
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=colour)
        return img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))

    ex = EfficientNetLite0()
    train = [lesion(i) for i in range(80)]
    test = [lesion(1000 + i) for i in range(80)]
    independent = [lesion(2000 + i) for i in range(40)]
    flipped = [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in train[:40]]
    f_train, f_test = ex.extract(train), ex.extract(test)

    copied = memorization(ex.extract(flipped), f_train, f_test)
    assert copied["near_copy_rate"] > 0.9
    assert (copied["nearest_train_index"] == np.arange(40)).mean() > 0.9
    honest = memorization(ex.extract(independent), f_train, f_test)
    assert honest["near_copy_rate"] < 0.4


@pytest.mark.parametrize("n", [50, 400])
def test_fid_equals_torch_fidelity_own_function(n):
    """Our symmetric eigendecomposition gives torch-fidelity's number, also when N < dim (rank-deficient)."""
    from dermabench.metrics.fidelity import fid_from_statistics, fid_statistics, fid_torch_fidelity

    rng = np.random.default_rng(n)
    a = rng.standard_normal((n, 128)) @ rng.standard_normal((128, 128)) * 0.1
    b = rng.standard_normal((n, 128)) * 1.3 + 0.2
    stats_a, stats_b = fid_statistics(a), fid_statistics(b)
    ours = fid_from_statistics(*stats_a, *stats_b)
    reference = fid_torch_fidelity(*stats_a, *stats_b)
    assert ours == pytest.approx(reference, rel=1e-6)


def test_statistics_are_float64_even_from_float32_features():
    rng = np.random.default_rng(7)
    features = (rng.standard_normal((300, 16)) * 1e3 + 1e4).astype(np.float32)  # large offset: float32 sums would drift
    mu, sigma = fid_statistics(features)
    assert mu.dtype == sigma.dtype == np.float64
    exact = features.astype(np.float64)
    np.testing.assert_allclose(mu, exact.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(exact, rowvar=False), rtol=1e-9, atol=1e-9)


def _two_density_classes(rng, n_benign, n_malignant, dim=16):
    """Benign images spread out, malignant ones tight: the classes' nearest-train distances differ."""
    benign = 2.0 + rng.standard_normal((n_benign, dim))
    malignant = np.r_[np.full(dim // 2, 3.0), np.full(dim // 2, -3.0)] + 0.3 * rng.standard_normal((n_malignant, dim))
    return np.vstack([benign, malignant]), np.r_[np.zeros(n_benign, int), np.ones(n_malignant, int)]


def test_memorization_thresholds_per_class_whatever_the_class_mix():
    """A non-copying, class-balanced generator vs calibration images at 20 % malignant: with one class-blind
    threshold the rate is off (0.12-0.15 here, not 0.05); with a threshold per class it is 0.05 in each class."""
    rng = np.random.default_rng(0)
    train, _ = _two_density_classes(rng, 1600, 400)
    calibration, calibration_labels = _two_density_classes(rng, 1600, 400)
    synthetic, synthetic_labels = _two_density_classes(rng, 2000, 2000)
    blind = memorization(synthetic, train, calibration)
    assert blind["near_copy_rate"] > 0.1 and blind["class_conditional"] is False and "per_class" not in blind
    out = memorization(synthetic, train, calibration, synthetic_labels=synthetic_labels,
                       calibration_labels=calibration_labels)  # fmt: skip
    assert out["class_conditional"] is True
    assert out["near_copy_rate"] == pytest.approx(0.05, abs=0.015)
    assert set(out["per_class"]) == {"benign", "malignant"}
    for label, name in ((0, "benign"), (1, "malignant")):
        entry = out["per_class"][name]
        assert entry["n"] == 2000 and entry["n_calibration"] == (1600, 400)[label]
        assert entry["near_copy_rate"] == pytest.approx(0.05, abs=0.025), name
        own = out["distances"][synthetic_labels == label]
        assert entry["threshold"] == np.quantile(memorization(calibration[calibration_labels == label], train,
                                                              calibration[calibration_labels == label])["distances"],
                                                 0.05)  # fmt: skip
        assert entry["near_copy_rate"] == np.mean(own < entry["threshold"])
    # the overall rate is over all synthetic images; the class-blind threshold is still reported
    rates = [out["per_class"][name]["near_copy_rate"] for name in out["per_class"]]
    assert out["near_copy_rate"] == pytest.approx(np.mean(rates))  # two classes of 2000
    assert out["threshold"] == blind["threshold"] and out["n_calibration"] == 2000


def test_memorization_class_without_calibration_images_and_label_errors():
    rng = np.random.default_rng(1)
    train, _ = _two_density_classes(rng, 100, 100)
    calibration, _ = _two_density_classes(rng, 50, 0)
    synthetic, labels = _two_density_classes(rng, 20, 20)
    out = memorization(synthetic, train, calibration, synthetic_labels=labels, calibration_labels=np.zeros(50, int))
    assert out["per_class"]["malignant"]["n_calibration"] == 0
    assert out["per_class"]["malignant"]["threshold"] == out["threshold"]
    assert "class-blind" in out["per_class"]["malignant"]["note"]
    with pytest.raises(ValueError, match="both"):
        memorization(synthetic, train, calibration, synthetic_labels=labels)
    with pytest.raises(ValueError, match="one label per image"):
        memorization(synthetic, train, calibration, synthetic_labels=labels[:5], calibration_labels=np.zeros(50, int))
