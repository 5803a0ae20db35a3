"""Classification metrics per subgroup of the test set: body site, sex, age band, Fitzpatrick type.

A synthetic-data gain on the whole test set can hide a loss on a subgroup (darker
skin types, acral sites), and dermatology reviewers ask for exactly that table.
Each subgroup gets the same statistics as the whole set (`evaluate_arms`, the
lesion × seed bootstrap, the paired delta to `real`) and its size. Subgroups too
small for a stable AUC are flagged `too_small`, never dropped: a reader should see
that a group exists and was not measured well. Groups with a single class have
no AUC at all; their metrics are `None` with the reason in `note`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dermabench.api import Sample
from dermabench.metrics.classification import evaluate_arms

#: a subgroup below either count is `too_small`: with fewer than 10 cases of a class an AUC's 95 % CI
#: spans about ±0.2 at AUC 0.8 (Hanley–McNeil SE 0.10), too wide to compare arms
MIN_IMAGES = 30
MIN_PER_CLASS = 10
AGE_BANDS = ((0, 30, "<30"), (30, 50, "30-49"), (50, 70, "50-69"), (70, math.inf, "70+"))
#: what is kept per arm and subgroup (the whole-set result has every metric)
KEPT = ("auc", "balanced_accuracy", "sensitivity", "specificity", "sens_at_spec90")


def age_band(age: Any) -> str | None:
    """The band of an age in years; None (counted as unknown) when it is missing, not a number, or negative."""
    try:
        value = float(age)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value) or value < 0:
        return None  # a negative age is a data error: unknown, not a crash of the whole table
    return next(name for low, high, name in AGE_BANDS if low <= value < high)


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    text = str(value).strip()
    return None if text.lower() in ("", "unknown", "nan", "none") else text


#: attribute in the result -> how it is read from a sample's meta
ATTRIBUTES = {
    "site": lambda meta: _text(meta.get("site")),
    "sex": lambda meta: _text(meta.get("sex")),
    "age_band": lambda meta: age_band(meta.get("age")),
    "fitzpatrick": lambda meta: _text(meta.get("fitzpatrick")),
}


def _slim(arm: Mapping[str, Any], reference: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for metric in KEPT:
        out[metric] = arm.get(metric)
        out[f"{metric}_ci95"] = arm.get(f"{metric}_ci95")
    out["ci_resamples"] = arm.get("ci_resamples")
    delta = arm.get(f"delta_vs_{reference}")
    if delta is not None:
        out[f"delta_vs_{reference}"] = {metric: delta[metric] for metric in KEPT}
    return out


def evaluate_subgroups(
    test: Sequence[Sample],
    groups: Sequence[Any],
    probabilities: Mapping[str, Sequence[np.ndarray]],
    reference: str = "real",
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """{attribute: {"n_unknown": int, "groups": {value: {n, n_malignant, n_lesions, too_small, note, arms}}}}.

    Attributes with fewer than two known values in the test set are left out.
    """
    y = np.array([s.label for s in test])
    ids = list(groups)
    groups = np.empty(len(ids), dtype=object)  # the ids as given (tuples too): 1 and "1" stay two lesions
    for i, g in enumerate(ids):
        groups[i] = g
    out: dict[str, Any] = {}
    for attribute, read in ATTRIBUTES.items():
        values = [read(s.meta) for s in test]
        known = sorted({v for v in values if v is not None})
        if len(known) < 2:
            continue
        table: dict[str, Any] = {}
        for value in known:
            index = np.array([i for i, v in enumerate(values) if v == value])
            labels = y[index]
            n_malignant = int(labels.sum())
            n_benign = len(index) - n_malignant
            entry: dict[str, Any] = {
                "n": len(index),
                "n_malignant": n_malignant,
                "n_lesions": len(set(groups[index])),
                "too_small": len(index) < MIN_IMAGES or min(n_malignant, n_benign) < MIN_PER_CLASS,
                "note": None,
                "arms": None,
            }
            if n_malignant == 0 or n_benign == 0:
                entry["note"] = f"only {'benign' if n_malignant == 0 else 'malignant'} images: AUC is undefined"
            else:
                subset = {arm: [np.asarray(p)[index] for p in ps] for arm, ps in probabilities.items()}
                ref = reference if reference in subset else None
                arms = evaluate_arms(labels, groups[index], subset, reference=ref, n_boot=n_boot, seed=seed)
                entry["arms"] = {arm: _slim(metrics, reference) for arm, metrics in arms.items()}
            table[value] = entry
        out[attribute] = {"n_unknown": sum(v is None for v in values), "groups": table}
    return out
