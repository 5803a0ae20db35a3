"""Metrics per subgroup (site, sex, age band, Fitzpatrick type): the same statistics on each slice."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from dermabench.api import Sample
from dermabench.metrics.classification import evaluate_arms
from dermabench.metrics.subgroups import MIN_PER_CLASS, age_band, evaluate_subgroups

BLANK = Image.new("RGB", (4, 4))


def test_age_bands():
    assert [age_band(a) for a in (0, 29.9, 30, 49, 50, 69.5, 70, 85, None, "nan", "x", float("nan"))] == [
        "<30", "<30", "30-49", "30-49", "50-69", "50-69", "70+", "70+", None, None, None, None,
    ]  # fmt: skip
    # a negative age is a data error: unknown (counted in n_unknown), not a StopIteration
    assert age_band(-1) is None and age_band("-0.5") is None and age_band(-math.inf) is None


@pytest.fixture
def scored():
    """300 test images: sex known for all, site for most, one site benign-only, age for all, no skin type."""
    rng = np.random.default_rng(0)
    n = 300
    y = (rng.random(n) < 0.4).astype(int)
    sex = np.where(np.arange(n) % 2 == 0, "male", "female")
    site = np.array(["back", "face", "acral"])[np.arange(n) % 3]
    site[:20] = "unknown"
    site[(site == "acral") & (y == 1)] = "unknown"  # acral: benign only
    age = 20 + (np.arange(n) * 7) % 70
    tests = [
        Sample(BLANK, int(label), meta={"sex": s, "site": t, "age": float(a), "image_id": str(i)})
        for i, (label, s, t, a) in enumerate(zip(y, sex, site, age))
    ]
    groups = [f"lesion-{i // 2}" for i in range(n)]  # two images per lesion
    p_real = [np.clip(0.5 * y + 0.5 * rng.random(n), 0, 1) for _ in range(2)]
    p_mixed = [np.clip(0.6 * y + 0.4 * rng.random(n), 0, 1) for _ in range(2)]
    return tests, groups, {"real": p_real, "real+synthetic": p_mixed}, y


def test_each_subgroup_gets_the_statistics_of_its_slice(scored):
    tests, groups, probabilities, y = scored
    result = evaluate_subgroups(tests, groups, probabilities, n_boot=200, seed=1)
    assert set(result) == {"site", "sex", "age_band"}  # no skin type in the metadata: left out
    male = result["sex"]["groups"]["male"]
    index = np.array([i for i, t in enumerate(tests) if t.meta["sex"] == "male"])
    direct = evaluate_arms(
        y[index], np.asarray(groups)[index], {a: [p[index] for p in ps] for a, ps in probabilities.items()},
        n_boot=200, seed=1,
    )  # fmt: skip
    assert male["n"] == 150 and male["n_malignant"] == int(y[index].sum())
    assert male["n_lesions"] == 150  # lesion 2k holds images 2k (male) and 2k+1 (female)
    for arm in probabilities:
        for metric in ("auc", "balanced_accuracy", "sensitivity"):  # the AUC CI alone is [1, 1] here
            assert male["arms"][arm][metric] == direct[arm][metric]
            assert male["arms"][arm][f"{metric}_ci95"] == direct[arm][f"{metric}_ci95"]
        assert male["arms"][arm]["ci_resamples"] == "lesions+seeds"
    assert male["arms"]["real+synthetic"]["delta_vs_real"]["auc"] == direct["real+synthetic"]["delta_vs_real"]["auc"]
    assert male["too_small"] is False
    assert sum(g["n"] for g in result["age_band"]["groups"].values()) == 300


def test_unknown_values_are_counted_and_single_class_groups_flagged_not_hidden(scored):
    tests, groups, probabilities, _ = scored
    site = evaluate_subgroups(tests, groups, probabilities, n_boot=50)["site"]
    n_unknown = sum(t.meta["site"] == "unknown" for t in tests)
    assert site["n_unknown"] == n_unknown and "unknown" not in site["groups"]
    acral = site["groups"]["acral"]
    assert acral["n_malignant"] == 0 and acral["arms"] is None and "AUC is undefined" in acral["note"]
    assert acral["too_small"] is True
    assert sum(g["n"] for g in site["groups"].values()) + n_unknown == len(tests)


def test_a_group_with_few_cases_of_a_class_is_too_small(scored):
    tests, groups, probabilities, y = scored
    # keep MIN_PER_CLASS - 1 malignant "face" images; the rest of the face images become benign-only
    face = [i for i, t in enumerate(tests) if t.meta["site"] == "face" and t.label == 1]
    keep = set(face[: MIN_PER_CLASS - 1])
    trimmed = [t for i, t in enumerate(tests) if not (i in face and i not in keep)]
    index = [i for i in range(len(tests)) if not (i in face and i not in keep)]
    probs = {a: [p[index] for p in ps] for a, ps in probabilities.items()}
    face_group = evaluate_subgroups(trimmed, [groups[i] for i in index], probs, n_boot=50)["site"]["groups"]["face"]
    assert face_group["n_malignant"] == MIN_PER_CLASS - 1
    assert face_group["too_small"] is True and face_group["arms"]["real"]["auc"] is not None


def test_negative_ages_are_unknown_and_lesion_ids_keep_their_kind():
    rng = np.random.default_rng(3)
    n = 120
    y = np.tile([0, 1], n // 2)
    sex = np.where((np.arange(n) // 2) % 2 == 0, "male", "female")  # both images of a pair: the same sex
    age = np.where(np.arange(n) < 7, -5.0, 40.0 + np.arange(n) % 40)
    tests = [Sample(BLANK, int(label), meta={"sex": s, "age": float(a)}) for label, s, a in zip(y, sex, age)]
    probabilities = {"real": [np.clip(0.5 * y + 0.5 * rng.random(n), 0, 1)]}
    # image 2k has lesion id k (an int), image 2k+1 id "k" (a string): two lesions, not one
    mixed = [k // 2 if k % 2 == 0 else str(k // 2) for k in range(n)]
    result = evaluate_subgroups(tests, mixed, probabilities, n_boot=20)
    assert result["age_band"]["n_unknown"] == 7  # negative ages: unknown, not a StopIteration
    assert result["sex"]["groups"]["male"]["n_lesions"] == 60
    # tuple ids work; both images of a pair share one
    tuples = [("patient", k // 2) for k in range(n)]
    male = evaluate_subgroups(tests, tuples, probabilities, n_boot=20)["sex"]["groups"]["male"]
    assert male["n_lesions"] == 30 and male["arms"]["real"]["auc_ci95"] is not None
