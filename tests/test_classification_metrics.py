"""Classification metrics and lesion × seed bootstrap CIs (dermabench.metrics.classification)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    recall_score,
    roc_auc_score,
)

from dermabench.metrics.classification import (
    METRICS,
    _bootstrap_p_value,
    _SortedScores,
    _weighted_metrics,
    classification_metrics,
    evaluate_arms,
    grouped_bootstrap_counts,
    grouped_bootstrap_indices,
    seed_bootstrap_counts,
)


def _lesion_data(n_lesions=60, seed=0, prevalence=0.4):
    """Test images grouped into lesions (1-4 images each); label is per lesion."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, n_lesions)
    lesion_label = (rng.random(n_lesions) < prevalence).astype(int)
    lesion_label[:2] = [0, 1]  # both classes present
    groups = np.repeat(np.arange(n_lesions), sizes)
    y = lesion_label[groups]
    return y, groups


def _probs(y, signal, rng, n_seeds=3, decimals=None):
    out = []
    for _ in range(n_seeds):
        logit = signal * (2 * y - 1) + rng.normal(0.0, 1.0, y.shape[0])
        p = 1.0 / (1.0 + np.exp(-logit))
        out.append(np.round(p, decimals) if decimals is not None else p)
    return out


def _brute_sens_at_spec(y, p, spec):
    best = 0.0
    for t in np.concatenate([np.unique(p), [np.inf]]):
        pred = p >= t
        sens = (pred & (y == 1)).sum() / (y == 1).sum()
        spc = (~pred & (y == 0)).sum() / (y == 0).sum()
        if spc >= spec - 1e-12:
            best = max(best, sens)
    return best


def _assert_plain(obj, path="result"):
    """Only JSON-native Python types, no numpy scalars, no NaN."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, str), path
            _assert_plain(v, f"{path}[{k!r}]")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _assert_plain(v, f"{path}[{i}]")
    else:
        assert obj is None or type(obj) in (float, int, str, bool), f"{path}: {type(obj)}"
        if type(obj) is float:
            assert np.isfinite(obj), path


# ----------------------------------------------------------------------------- classification_metrics


def test_metrics_constant():
    assert METRICS == (
        "accuracy",
        "balanced_accuracy",
        "auc",
        "sensitivity",
        "specificity",
        "f1",
        "sens_at_spec80",
        "sens_at_spec90",
    )


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("decimals", [None, 1])  # 1 decimal -> many ties
def test_metrics_agree_with_sklearn(seed, decimals):
    rng = np.random.default_rng(seed)
    n = 200
    y = (rng.random(n) < 0.35).astype(int)
    p = _probs(y, 1.0, rng, n_seeds=1, decimals=decimals)[0]
    got = classification_metrics(y, p, threshold=0.5)
    pred = (p >= 0.5).astype(int)
    assert set(got) == set(METRICS)
    assert got["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    assert got["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert got["sensitivity"] == pytest.approx(recall_score(y, pred, pos_label=1), abs=1e-12)
    assert got["specificity"] == pytest.approx(recall_score(y, pred, pos_label=0), abs=1e-12)
    assert got["f1"] == pytest.approx(f1_score(y, pred), abs=1e-12)
    assert got["sens_at_spec80"] == pytest.approx(_brute_sens_at_spec(y, p, 0.8), abs=1e-12)
    assert got["sens_at_spec90"] == pytest.approx(_brute_sens_at_spec(y, p, 0.9), abs=1e-12)
    _assert_plain(got)


def test_metrics_exact_small_case():
    y = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    p = [0.1, 0.2, 0.3, 0.4, 0.9, 0.35, 0.6, 0.7, 0.8, 0.95]
    m = classification_metrics(y, p)
    # predictions at 0.5: benign ok 4/5, malignant ok 4/5
    assert m["accuracy"] == 0.8
    assert m["sensitivity"] == 0.8
    assert m["specificity"] == 0.8
    assert m["balanced_accuracy"] == 0.8
    assert m["f1"] == pytest.approx(0.8, abs=1e-15)
    # pairs (pos > neg): 0.35 beats 3, the other four beat 4 each except 0.9 beats 0.6/0.7/0.8 -> 3+4+4+4+5 - 3 = 20/25
    assert m["auc"] == pytest.approx(20 / 25, abs=1e-15)
    # spec >= 0.8 (fpr <= 1/5): threshold 0.6 -> sens 4/5 with the 0.9 benign as the one FP
    assert m["sens_at_spec80"] == 0.8
    # spec >= 0.9 (no FP): threshold 0.95 -> sens 1/5
    assert m["sens_at_spec90"] == 0.2
    # the threshold is >=, and moves the threshold metrics only
    m2 = classification_metrics(y, p, threshold=0.35)
    assert m2["sensitivity"] == 1.0 and m2["specificity"] == 0.6
    assert m2["auc"] == m["auc"]


def test_single_class_labels_give_none_not_a_crash():
    y = np.zeros(6, dtype=int)
    m = classification_metrics(y, [0.1, 0.2, 0.3, 0.4, 0.6, 0.7])
    assert m["auc"] is None
    assert m["sens_at_spec80"] is None and m["sens_at_spec90"] is None
    assert m["sensitivity"] is None
    assert m["balanced_accuracy"] is None
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["f1"] == 0.0  # two false positives, no true positive
    m = classification_metrics(y, [0.1] * 6)
    assert m["f1"] is None  # 0/0: no malignant case and no malignant prediction
    m = classification_metrics(np.ones(3, dtype=int), [0.9, 0.2, 0.8])
    assert m["auc"] is None and m["specificity"] is None and m["sensitivity"] == pytest.approx(2 / 3)
    _assert_plain(m)


def test_single_class_in_evaluate_arms():
    y = np.zeros(8, dtype=int)
    groups = [0, 0, 1, 2, 2, 3, 4, 5]
    p = np.linspace(0.1, 0.8, 8)
    r = evaluate_arms(y, groups, {"real": [p], "synthetic": [p[::-1]]}, n_boot=50)
    for arm in r.values():
        assert arm["auc"] is None and arm["auc_ci95"] is None
        assert arm["n_boot_valid"]["auc"] == 0
        assert arm["n_boot_valid"]["accuracy"] == 50
        assert arm["accuracy_ci95"] is not None
    d = r["synthetic"]["delta_vs_real"]["auc"]
    assert d == {"value": None, "ci95": None, "p_value": None, "n_boot_valid": 0}
    _assert_plain(r)
    json.dumps(r)


def test_labels_may_be_bool_or_float():
    p = [0.2, 0.7, 0.4, 0.9]
    ref = classification_metrics([0, 1, 0, 1], p)
    assert classification_metrics(np.array([False, True, False, True]), p) == ref
    assert classification_metrics([0.0, 1.0, 0.0, 1.0], p) == ref


@pytest.mark.parametrize(
    ("y", "p", "match"),
    [
        ([0, 1, 1], [0.1, 0.2], "has 2 values but there are 3"),
        ([[0, 1], [1, 0]], [0.1, 0.2], "y_true must be 1-D"),
        ([0, 1], [[0.1, 0.2]], "must be 1-D"),
        ([0, 1, 2], [0.1, 0.2, 0.3], "only 0 .benign. and 1 .malignant.; found 2"),
        ([0, 1, 1], [0.1, np.nan, 0.3], "1 NaN/inf value.*index 1"),
        ([0, 1, 1], [0.1, np.inf, 0.3], "NaN/inf"),
        ([0, 1, 1], [0.1, 1.2, 0.3], r"in \[0, 1\].*max 1.2"),
        ([0, 1, 1], [-0.1, 0.5, 0.3], r"in \[0, 1\].*min -0.1"),
        ([], [], "empty"),
        (["a", "b"], [0.1, 0.2], "dtype"),
    ],
)
def test_classification_metrics_validation(y, p, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(y, p)


def test_threshold_validation():
    with pytest.raises(ValueError, match="threshold"):
        classification_metrics([0, 1], [0.2, 0.8], threshold=1.5)


# ----------------------------------------------------------------------------- vectorised bootstrap


@pytest.mark.parametrize("decimals", [None, 1])
def test_weighted_metrics_equal_sklearn_on_resampled_images(decimals):
    # few lesions, so some resamples hold one class only: NaN must match None there
    y, groups = _lesion_data(n_lesions=6, seed=3, prevalence=0.2)
    rng = np.random.default_rng(5)
    probs = np.stack(_probs(y, 0.8, rng, n_seeds=2, decimals=decimals), axis=1)
    counts = grouped_bootstrap_counts(groups, 40, np.random.default_rng(11))
    res = _weighted_metrics(y, probs, [_SortedScores(y, probs[:, j]) for j in range(2)], counts, 0.5)
    idx_sets = grouped_bootstrap_indices(groups, 40, np.random.default_rng(11))
    single_class_seen = False
    for b, idx in enumerate(idx_sets):
        single_class_seen |= len(set(y[idx])) == 1
        for j in range(2):
            want = classification_metrics(y[idx], probs[idx, j])
            for m in METRICS:
                if want[m] is None:
                    assert np.isnan(res[m][b, j]), (b, j, m)
                else:
                    assert abs(res[m][b, j] - want[m]) <= 1e-12, (b, j, m)
    assert single_class_seen


def test_rank_auc_matches_roc_auc_score_with_weights_and_ties():
    rng = np.random.default_rng(7)
    n = 300
    y = (rng.random(n) < 0.4).astype(int)
    p = np.round(rng.random(n) * 0.6 + 0.4 * y, 2)  # many ties
    w = rng.integers(0, 5, size=(20, n))
    w[:, 0] = 1  # keep it non-degenerate
    res = _weighted_metrics(y, p[:, None], [_SortedScores(y, p)], w, 0.5)
    for b in range(20):
        assert abs(res["auc"][b, 0] - roc_auc_score(y, p, sample_weight=w[b])) <= 1e-12


def test_grouped_bootstrap_indices_are_unions_of_whole_lesions():
    y, groups = _lesion_data(n_lesions=25, seed=1)
    n_groups = len(np.unique(groups))
    counts = grouped_bootstrap_counts(groups, 100, np.random.default_rng(0))
    assert counts.shape == (100, len(groups))
    for row in counts:
        per_group = {}
        for g, c in zip(groups, row):
            per_group.setdefault(g, set()).add(int(c))
        assert all(len(cs) == 1 for cs in per_group.values())  # whole lesions only
        assert sum(next(iter(cs)) for cs in per_group.values()) == n_groups  # G draws per resample
    idx = grouped_bootstrap_indices(groups, 100, np.random.default_rng(0))
    for row, ix in zip(counts, idx):
        assert np.array_equal(np.bincount(ix, minlength=len(groups)), row)
    # string lesion ids work the same as integer ones with the same sort order
    str_groups = np.array([f"L{g:03d}" for g in groups])
    assert np.array_equal(grouped_bootstrap_counts(str_groups, 100, np.random.default_rng(0)), counts)


def test_evaluate_arms_ci_is_the_lesion_and_seed_bootstrap_of_the_seed_mean():
    """Recompute every CI and delta from the exposed resamples with scikit-learn: lesions drawn with replacement and,
    for K > 1 seeds, K seeds drawn with replacement; the same seed draws for arms with the same K."""
    y, groups = _lesion_data(n_lesions=30, seed=2)
    rng = np.random.default_rng(3)
    probs = {
        "real": _probs(y, 1.0, rng, n_seeds=2),
        "real+synthetic": _probs(y, 1.3, rng, n_seeds=2),  # same K as real: seed draws shared (paired)
        "synthetic": _probs(y, 0.5, rng, n_seeds=1),  # K = 1: lesions only
        "real+augment": _probs(y, 0.8, rng, n_seeds=3),  # another K: its own seed draws
    }
    n_boot = 25
    r = evaluate_arms(y, groups, probs, n_boot=n_boot, seed=9)
    idx_sets = grouped_bootstrap_indices(groups, n_boot, np.random.default_rng(9))
    seed_draws = {k: seed_bootstrap_counts(k, n_boot, 9) for k in (1, 2, 3)}
    assert (seed_draws[1] == 1).all() and (seed_draws[2].sum(axis=1) == 2).all()
    assert not (seed_draws[2] == 1).all()  # some resamples draw one seed twice
    boot = {a: {m: [] for m in METRICS} for a in probs}
    for b, idx in enumerate(idx_sets):
        for a, seeds in probs.items():
            drawn = np.repeat(np.arange(len(seeds)), seed_draws[len(seeds)][b])
            per = [classification_metrics(y[idx], seeds[k][idx]) for k in drawn]
            for m in METRICS:
                vals = [d[m] for d in per]
                boot[a][m].append(np.nan if None in vals else np.mean(vals))
    for a in probs:
        assert r[a]["ci_resamples"] == ("lesions" if a == "synthetic" else "lesions+seeds")
        for m in METRICS:
            v = np.array(boot[a][m])
            assert r[a]["n_boot_valid"][m] == np.isfinite(v).sum()
            want = np.percentile(v[np.isfinite(v)], [2.5, 97.5])
            assert r[a][f"{m}_ci95"] == pytest.approx(list(want), abs=1e-12)
    for a in ("real+synthetic", "synthetic", "real+augment"):
        for m in METRICS:
            d = np.array(boot[a][m]) - np.array(boot["real"][m])
            d = d[np.isfinite(d)]
            got = r[a]["delta_vs_real"][m]
            assert got["ci95"] == pytest.approx(list(np.percentile(d, [2.5, 97.5])), abs=1e-12)
            assert got["n_boot_valid"] == d.size


def test_seed_noise_alone_does_not_make_a_significant_delta():
    """Null: two arms with the same recipe, only the classifier seeds differ (K = 5, a per-seed shift in the scores).
    Seeds averaged before a lesion-only bootstrap (protocol v1), the accuracy delta's CI excluded 0 in 35 % of
    runs; resampling seeds too brings it to the nominal 5 %."""
    rng = np.random.default_rng(0)
    n, reps, excluded = 300, 40, 0
    for _ in range(reps):
        y = (rng.random(n) < 0.3).astype(int)
        difficulty = 1.2 * (2 * y - 1) + rng.standard_normal(n)  # shared by every model

        def arm(difficulty=difficulty):
            return [1 / (1 + np.exp(-(difficulty + 0.8 * rng.standard_normal(n) + 0.3 * rng.standard_normal())))
                    for _ in range(5)]  # fmt: skip

        r = evaluate_arms(y, np.arange(n) // 2, {"real": arm(), "real+synthetic": arm()}, n_boot=200, seed=1)
        lo, hi = r["real+synthetic"]["delta_vs_real"]["accuracy"]["ci95"]
        excluded += lo > 0 or hi < 0
    assert excluded <= 4  # 10 %; here 1 (protocol v1: 11 of 40)


def test_one_seed_keeps_the_lesion_only_bootstrap_and_says_so():
    y, groups = _lesion_data(n_lesions=40, seed=12)
    rng = np.random.default_rng(12)
    one = {"real": _probs(y, 1.0, rng, n_seeds=1), "synthetic": _probs(y, 0.7, rng, n_seeds=1)}
    r = evaluate_arms(y, groups, one, n_boot=50, seed=2)
    counts = grouped_bootstrap_counts(groups, 50, np.random.default_rng(2))
    res = _weighted_metrics(y, one["real"][0][:, None], [_SortedScores(y, one["real"][0])], counts, 0.5)
    assert r["real"]["auc_ci95"] == pytest.approx(list(np.percentile(res["auc"][:, 0], [2.5, 97.5])), abs=1e-12)
    assert r["real"]["ci_resamples"] == r["synthetic"]["ci_resamples"] == "lesions"


def test_seed_bootstrap_counts():
    a = seed_bootstrap_counts(5, 300, 7)
    assert a.shape == (300, 5) and (a.sum(axis=1) == 5).all() and a.min() >= 0
    assert np.array_equal(a, seed_bootstrap_counts(5, 300, 7))
    assert not np.array_equal(a, seed_bootstrap_counts(5, 300, 8))
    assert (seed_bootstrap_counts(1, 4, 7) == 1).all()
    with pytest.raises(ValueError, match="n_seeds"):
        seed_bootstrap_counts(0, 4, 7)


def test_duplicating_images_within_lesions_leaves_grouped_ci_unchanged():
    y, groups = _lesion_data(n_lesions=40, seed=4)
    rng = np.random.default_rng(4)
    probs = {"real": _probs(y, 1.0, rng), "real+synthetic": _probs(y, 1.5, rng)}
    r1 = evaluate_arms(y, groups, probs, n_boot=200, seed=1)
    dup = np.concatenate([np.arange(len(y)), np.arange(len(y))])  # every image twice, same lesion
    r2 = evaluate_arms(y[dup], groups[dup], {a: [s[dup] for s in v] for a, v in probs.items()}, n_boot=200, seed=1)
    for a in probs:
        assert r2[a]["n_test"] == 2 * r1[a]["n_test"]
        assert r2[a]["n_test_lesions"] == r1[a]["n_test_lesions"] == 40
        for m in METRICS:
            assert r2[a][m] == pytest.approx(r1[a][m], abs=1e-12)
            assert r2[a][f"{m}_ci95"] == r1[a][f"{m}_ci95"]  # exact: same lesion draws, counts doubled
    for m in METRICS:
        assert r2["real+synthetic"]["delta_vs_real"][m]["ci95"] == r1["real+synthetic"]["delta_vs_real"][m]["ci95"]
    # whereas an image-level bootstrap treats the copies as independent evidence: narrower CIs
    r3 = evaluate_arms(y[dup], None, {a: [s[dup] for s in v] for a, v in probs.items()}, n_boot=200, seed=1)
    lo1, hi1 = r1["real"]["accuracy_ci95"]
    lo3, hi3 = r3["real"]["accuracy_ci95"]
    assert hi3 - lo3 < hi1 - lo1
    assert r3["real"]["n_test_lesions"] == 2 * len(y)


# ----------------------------------------------------------------------------- evaluate_arms


def test_identical_arms_have_zero_delta():
    y, groups = _lesion_data(seed=5)
    seeds = _probs(y, 1.0, np.random.default_rng(5))
    r = evaluate_arms(y, groups, {"real": seeds, "real+synthetic": [s.copy() for s in seeds]}, n_boot=300)
    assert "delta_vs_real" not in r["real"]
    for m in METRICS:
        d = r["real+synthetic"]["delta_vs_real"][m]
        assert d["value"] == 0.0
        assert d["ci95"] == [0.0, 0.0]
        assert d["p_value"] == 1.0
        assert d["n_boot_valid"] == 300
        assert r["real+synthetic"][f"{m}_ci95"] == r["real"][f"{m}_ci95"]


def test_clearly_better_arm_has_positive_delta_ci_and_small_p():
    y, groups = _lesion_data(n_lesions=150, seed=6)
    rng = np.random.default_rng(6)
    r = evaluate_arms(y, groups, {"real": _probs(y, 0.3, rng), "real+synthetic": _probs(y, 2.0, rng)}, n_boot=500)
    for m in ("accuracy", "balanced_accuracy", "auc", "f1"):
        d = r["real+synthetic"]["delta_vs_real"][m]
        assert d["value"] > 0
        assert d["ci95"][0] > 0
        assert d["p_value"] == pytest.approx(2 / 501)  # no resample at or below 0
    # and the reverse comparison is just as clear, with the sign flipped
    r2 = evaluate_arms(y, groups, {"real": _probs(y, 2.0, rng), "synthetic": _probs(y, 0.3, rng)}, n_boot=500)
    assert r2["synthetic"]["delta_vs_real"]["auc"]["ci95"][1] < 0


def test_bootstrap_p_value():
    assert _bootstrap_p_value(np.zeros(9)) == 1.0
    assert _bootstrap_p_value(np.ones(9)) == pytest.approx(0.2)  # 2 * 1/10
    assert _bootstrap_p_value(np.array([-1.0, 1.0, 2.0, 3.0])) == pytest.approx(2 * 2 / 5)
    assert _bootstrap_p_value(np.array([])) is None


def test_deterministic_for_a_seed():
    y, groups = _lesion_data(seed=7)
    rng = np.random.default_rng(7)
    probs = {"real": _probs(y, 1.0, rng), "synthetic": _probs(y, 0.8, rng)}
    a = evaluate_arms(y, groups, probs, n_boot=100, seed=3)
    b = evaluate_arms(y, groups, probs, n_boot=100, seed=3)
    c = evaluate_arms(y, groups, probs, n_boot=100, seed=4)
    assert json.dumps(a) == json.dumps(b)
    assert a["real"]["auc_ci95"] != c["real"]["auc_ci95"]
    assert a["real"]["auc"] == c["real"]["auc"]  # point estimates do not depend on the bootstrap


def test_point_estimate_inside_its_ci():
    y, groups = _lesion_data(n_lesions=200, seed=8)
    rng = np.random.default_rng(8)
    r = evaluate_arms(y, groups, {"real": _probs(y, 1.0, rng), "synthetic": _probs(y, 0.6, rng)}, n_boot=500)
    for arm in r.values():
        for m in METRICS:
            lo, hi = arm[f"{m}_ci95"]
            assert lo <= arm[m] <= hi, m
    for m in METRICS:
        d = r["synthetic"]["delta_vs_real"][m]
        assert d["ci95"][0] <= d["value"] <= d["ci95"][1], m


def test_point_estimate_is_mean_over_seeds():
    y, groups = _lesion_data(seed=9)
    rng = np.random.default_rng(9)
    seeds = _probs(y, 1.0, rng, n_seeds=4)
    r = evaluate_arms(y, groups, {"real": seeds, "single": seeds[:1]}, n_boot=20)
    real = r["real"]
    assert real["n_seeds"] == 4 and len(real["per_seed"]) == 4
    for k, s in enumerate(seeds):
        assert real["per_seed"][k] == classification_metrics(y, s)
    for m in METRICS:
        vals = [classification_metrics(y, s)[m] for s in seeds]
        assert real[m] == pytest.approx(np.mean(vals), abs=1e-15)
        assert real[f"{m}_std"] == pytest.approx(np.std(vals, ddof=1), abs=1e-15)
        assert r["single"][m] == vals[0]
        assert r["single"][f"{m}_std"] is None  # one seed: no spread to report
        assert r["single"]["delta_vs_real"][m]["value"] == pytest.approx(vals[0] - np.mean(vals), abs=1e-15)
    assert real["n_test"] == len(y)
    assert real["n_test_lesions"] == len(np.unique(groups))


def test_result_layout_is_plain_json():
    y, groups = _lesion_data(seed=10)
    rng = np.random.default_rng(10)
    probs = {a: _probs(y, 1.0, rng, n_seeds=2) for a in ("real", "real+synthetic", "synthetic", "real+augment")}
    r = evaluate_arms(y, groups, probs, n_boot=50)
    assert list(r) == list(probs)
    keys = set(METRICS) | {f"{m}_std" for m in METRICS} | {f"{m}_ci95" for m in METRICS}
    keys |= {"per_seed", "n_seeds", "n_test", "n_test_lesions", "n_boot", "n_boot_valid", "ci_resamples"}
    assert set(r["real"]) == keys
    for a in ("real+synthetic", "synthetic", "real+augment"):
        assert set(r[a]) == keys | {"delta_vs_real"}
        assert set(r[a]["delta_vs_real"]) == set(METRICS)
    _assert_plain(r)
    assert json.loads(json.dumps(r)) == r
    # no reference: no deltas
    assert all("delta_vs_real" not in v for v in evaluate_arms(y, groups, probs, reference=None, n_boot=5).values())
    # another reference names the key after it
    r = evaluate_arms(y, groups, probs, reference="synthetic", n_boot=5)
    assert "delta_vs_synthetic" in r["real"] and "delta_vs_synthetic" not in r["synthetic"]
    # no bootstrap: points only
    r = evaluate_arms(y, groups, probs, n_boot=0)
    assert r["real"]["auc_ci95"] is None and r["real"]["n_boot_valid"]["auc"] == 0
    assert r["synthetic"]["delta_vs_real"]["auc"]["p_value"] is None


def test_seed_arrays_may_be_a_2d_array_or_a_bare_vector():
    y, groups = _lesion_data(seed=11)
    seeds = _probs(y, 1.0, np.random.default_rng(11))
    a = evaluate_arms(y, groups, {"real": seeds}, n_boot=20)
    b = evaluate_arms(y, groups, {"real": np.stack(seeds)}, n_boot=20)
    assert a == b
    c = evaluate_arms(y, groups, {"real": seeds[0]}, n_boot=20)
    d = evaluate_arms(y, groups, {"real": [seeds[0]]}, n_boot=20)
    assert c == d and c["real"]["n_seeds"] == 1


def test_evaluate_arms_validation():
    y, groups = np.array([0, 1, 0, 1]), np.array([0, 0, 1, 2])
    ok = [np.array([0.1, 0.9, 0.2, 0.8])]
    with pytest.raises(ValueError, match="reference arm 'real' is not among the arms: 'synthetic'"):
        evaluate_arms(y, groups, {"synthetic": ok})
    with pytest.raises(ValueError, match=r"probabilities\['real'\] is empty"):
        evaluate_arms(y, groups, {"real": []})
    with pytest.raises(ValueError, match=r"probabilities\['real'\]\[1\] has 3 values but there are 4"):
        evaluate_arms(y, groups, {"real": ok + [np.array([0.1, 0.2, 0.3])]})
    with pytest.raises(ValueError, match=r"probabilities\['s'\]\[0\] contains 1 NaN"):
        evaluate_arms(y, groups, {"real": ok, "s": [np.array([0.1, np.nan, 0.2, 0.8])]})
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        evaluate_arms(y, groups, {"real": [np.array([0.1, 2.0, 0.2, 0.8])]})
    with pytest.raises(ValueError, match="groups has 3 ids but there are 4"):
        evaluate_arms(y, groups[:3], {"real": ok})
    with pytest.raises(ValueError, match=r"groups\[1\] is None"):
        evaluate_arms(y, ["a", None, "b", "c"], {"real": ok})
    with pytest.raises(ValueError, match="groups contains NaN"):
        evaluate_arms(y, [1.0, np.nan, 2.0, 3.0], {"real": ok})
    with pytest.raises(ValueError, match="non-empty mapping"):
        evaluate_arms(y, groups, {})
    with pytest.raises(ValueError, match="n_boot"):
        evaluate_arms(y, groups, {"real": ok}, n_boot=-1)
    with pytest.raises(ValueError, match="only 0"):
        evaluate_arms([0, 1, 3, 1], groups, {"real": ok})


def test_lesion_ids_may_be_tuples_and_kinds_stay_apart():
    y = np.array([0, 1, 0, 1, 1, 0])
    p = [np.array([0.2, 0.7, 0.4, 0.9, 0.6, 0.3])]
    tuples = [("patient", 1), ("patient", 1), ("patient", 2), ("patient", 2), ("patient", 3), ("patient", 3)]
    r = evaluate_arms(y, tuples, {"real": p}, n_boot=30)
    assert r["real"]["n_test_lesions"] == 3
    assert r["real"] == evaluate_arms(y, ["a", "a", "b", "b", "c", "c"], {"real": p}, n_boot=30)["real"]
    counts = grouped_bootstrap_counts(tuples, 10, 0)  # a list of tuples is one id per image, not a 2-d array
    assert counts.shape == (10, 6) and (counts[:, 0] == counts[:, 1]).all()
    # 1 and "1" are two lesions (they used to merge into the string "1"); 1 and 1.0 are one, as in Python
    assert evaluate_arms(y, [1, "1", 2, 2, 3, 3], {"real": p}, n_boot=5)["real"]["n_test_lesions"] == 4
    assert evaluate_arms(y, [1.0, 1, 2, 2, 3, 3], {"real": p}, n_boot=5)["real"]["n_test_lesions"] == 3
    # the same string ids give the same bootstrap as a list, a typed array or an object array
    ids = [f"lesion-{i}" for i in (0, 0, 1, 10, 2, 2)]
    want = evaluate_arms(y, np.array(ids), {"real": p}, n_boot=40, seed=3)
    assert evaluate_arms(y, ids, {"real": p}, n_boot=40, seed=3) == want
    assert evaluate_arms(y, np.array(ids, dtype=object), {"real": p}, n_boot=40, seed=3) == want
    with pytest.raises(ValueError, match="not hashable"):
        evaluate_arms(y, [[1], [1], [2], [2], [3], [3]], {"real": p})
    with pytest.raises(ValueError, match="NaN"):
        evaluate_arms(y, [1, "a", float("nan"), 2, 3, 3], {"real": p})
