"""Train pool / validation / test splits, grouped by lesion and stratified by label.

Several images often show one lesion (HAM10000: 10,015 images of 7,470 lesions).
An image-level split puts photographs of one lesion on both sides and inflates
every test metric, so splits are grouped by lesion_id, else patient_id, else image.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from dermabench.api import Sample
from dermabench.errors import DermabenchError
from dermabench.results import write_json_atomic

SPLITS = ("train", "val", "test")


def group_of(sample: Sample, index: int) -> str:
    """The unit that must not straddle splits: lesion, else patient, else the image itself."""
    for key in ("lesion_id", "patient_id"):
        value = sample.meta.get(key)
        if value not in (None, ""):
            return f"{key}:{value}"
    return f"image:{sample.meta.get('image_id', index)}"


@dataclass(frozen=True)
class Split:
    """Which split each sample belongs to, by position in the dataset's sample list."""

    assignment: tuple[str, ...]  # "train" | "val" | "test" per sample
    image_ids: tuple[str, ...]
    groups: tuple[str, ...]
    #: "grouped" (ours, by lesion) or "official" (the dataset's own, which may not respect lesions)
    source: str = "grouped"

    def indices(self, name: str) -> list[int]:
        return [i for i, split in enumerate(self.assignment) if split == name]

    def describe(self) -> dict:
        """Where the split came from and what kept images together: the result's `data.split`.

        `grouped_by` counts images by the id that grouped them (lesion_id, patient_id, or none: the image
        alone); `groups_on_two_sides` counts lesions/patients whose images sit in two of train/val/test,
        which only a dataset's official split can do.
        """
        grouped_by = {"lesion_id": 0, "patient_id": 0, "image": 0}
        sides: dict[str, set[str]] = {}
        for group, split in zip(self.groups, self.assignment):
            grouped_by[group.split(":", 1)[0]] += 1
            if split in SPLITS:
                sides.setdefault(group, set()).add(split)
        return {
            "source": self.source,
            "grouped_by": grouped_by,
            "groups_on_two_sides": sum(len(parts) > 1 for parts in sides.values()),
        }

    def to_manifest(self, labels: Sequence[int]) -> dict:
        return {
            "images": [
                {"image_id": image_id, "group": group, "label": int(label), "split": split}
                for image_id, group, label, split in zip(self.image_ids, self.groups, labels, self.assignment)
            ]
        }


def grouped_split(
    samples: Sequence[Sample], seed: int, val_fraction: float, test_fraction: float, with_test: bool = True
) -> Split:
    """Assign each sample to train/val/test so that no group spans two splits, label-stratified.

    With `with_test=False` (a separate test dataset) only train and val are made.
    """
    labels = np.array([s.label for s in samples])
    groups = [group_of(s, i) for i, s in enumerate(samples)]
    image_ids = tuple(str(s.meta.get("image_id", i)) for i, s in enumerate(samples))
    if len(set(image_ids)) != len(image_ids):
        raise DermabenchError("the dataset has duplicate image ids; a split manifest needs unique ids")
    for label in (0, 1):
        n_groups = len({g for g, y in zip(groups, labels) if y == label})
        if n_groups < 3:
            name = "benign" if label == 0 else "malignant"
            raise DermabenchError(f"only {n_groups} {name} lesion(s) in the dataset: too few to split")
    assignment = np.array(["train"] * len(samples), dtype=object)
    remaining = np.arange(len(samples))
    holdouts = [("test", test_fraction), ("val", val_fraction)] if with_test else [("val", val_fraction)]
    fraction_left = 1.0
    for step, (name, fraction) in enumerate(holdouts):
        n_splits = max(2, round(fraction_left / fraction))
        folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed + step)
        sub_groups = [groups[i] for i in remaining]
        _, held = next(folds.split(np.zeros(len(remaining)), labels[remaining], sub_groups))
        assignment[remaining[held]] = name
        remaining = np.setdiff1d(remaining, remaining[held])
        fraction_left -= fraction
    return Split(tuple(assignment), image_ids, tuple(groups))


def official_split(samples: Sequence[Sample], with_test: bool = True) -> Split | None:
    """The dataset's own split, when every sample carries `meta["official_split"]` (e.g. DermaMNIST).

    Published splits are what results in the literature use, so they win over ours.
    With a separate test dataset, the official test images are left out ("unused").
    """
    names = [s.meta.get("official_split") for s in samples]
    if not names or any(name not in SPLITS for name in names):
        return None
    if not with_test:
        names = ["unused" if name == "test" else name for name in names]
    return Split(
        tuple(names),
        tuple(str(s.meta.get("image_id", i)) for i, s in enumerate(samples)),
        tuple(group_of(s, i) for i, s in enumerate(samples)),
        source="official",
    )


def load_or_make_split(
    path: Path, samples: Sequence[Sample], seed: int, val_fraction: float, test_fraction: float, with_test: bool
) -> Split:
    """The official split if the dataset has one; else reuse the manifest at `path`, or make and save one."""
    official = official_split(samples, with_test)
    if official is not None:
        return official
    image_ids = [str(s.meta.get("image_id", i)) for i, s in enumerate(samples)]
    if path.is_file():
        manifest = json.loads(path.read_text())["images"]
        # a lesion id or label fixed since would otherwise put one lesion on two sides, or unbalance the split
        current = [(image_id, group_of(s, i), int(s.label)) for i, (image_id, s) in enumerate(zip(image_ids, samples))]
        if [(row["image_id"], row["group"], row["label"]) for row in manifest] != current:
            raise DermabenchError(
                f"split manifest {path} was made for different images, lesion ids or labels; "
                "the dataset changed since — delete the manifest to make a new split"
            )
        return Split(
            tuple(row["split"] for row in manifest), tuple(image_ids), tuple(row["group"] for row in manifest)
        )
    split = grouped_split(samples, seed, val_fraction, test_fraction, with_test)
    write_json_atomic(path, split.to_manifest([s.label for s in samples]))
    return split
