"""Grouped splits never put one lesion on two sides; manifests are reused and checked."""

import csv
import json
import os
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermabench.api import Sample
from dermabench.errors import DermabenchError
from dermabench.splits import grouped_split, load_or_make_split

HAM = Path(os.environ.get("DERMABENCH_HAM10000", Path(__file__).resolve().parents[2] / "shared/data/ham10000"))
BLANK = Image.new("RGB", (4, 4))


def fixture_samples(n_lesions=300, seed=0):
    rng = np.random.default_rng(seed)
    samples = []
    for lesion in range(n_lesions):
        label = int(rng.random() < 0.25)
        for view in range(rng.integers(1, 4)):
            meta = {"image_id": f"img{lesion}-{view}", "lesion_id": f"L{lesion}", "patient_id": f"P{lesion // 2}"}
            samples.append(Sample(BLANK, label, meta=meta))
    return samples


def sides_per_group(split):
    sides = defaultdict(set)
    for group, side in zip(split.groups, split.assignment):
        sides[group].add(side)
    return sides


def test_no_lesion_on_two_sides_and_fractions_and_strata():
    samples = fixture_samples()
    split = grouped_split(samples, seed=0, val_fraction=0.2, test_fraction=0.2)
    assert all(len(sides) == 1 for sides in sides_per_group(split).values())
    labels = np.array([s.label for s in samples])
    for name, expected in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
        index = split.indices(name)
        assert abs(len(index) / len(samples) - expected) < 0.05
        assert abs(labels[index].mean() - labels.mean()) < 0.06  # stratified by label


def test_group_falls_back_to_patient_then_image():
    samples = [Sample(BLANK, i % 2, meta={"image_id": f"i{i}", "patient_id": f"p{i // 4}"}) for i in range(200)]
    split = grouped_split(samples, seed=1, val_fraction=0.2, test_fraction=0.2)
    assert split.groups[0] == "patient_id:p0"
    assert all(len(sides) == 1 for sides in sides_per_group(split).values())
    bare = [Sample(BLANK, i % 2, meta={"image_id": f"i{i}"}) for i in range(50)]
    assert grouped_split(bare, 0, 0.2, 0.2).groups[3] == "image:i3"


def test_same_seed_same_split_other_seed_other_split():
    samples = fixture_samples()
    a = grouped_split(samples, 0, 0.2, 0.2)
    assert a == grouped_split(samples, 0, 0.2, 0.2)
    assert a != grouped_split(samples, 1, 0.2, 0.2)


def test_without_test_split_only_train_and_val():
    split = grouped_split(fixture_samples(), 0, 0.2, 0.2, with_test=False)
    assert set(split.assignment) == {"train", "val"}


def test_manifest_is_saved_reused_and_checked(tmp_path):
    samples = fixture_samples()
    path = tmp_path / "split.json"
    first = load_or_make_split(path, samples, 0, 0.2, 0.2, True)
    manifest = json.loads(path.read_text())
    assert len(manifest["images"]) == len(samples)
    # a manifest edited on disk is what gets used: proof that it is read, not recomputed
    manifest["images"][0]["split"] = "val" if first.assignment[0] != "val" else "train"
    path.write_text(json.dumps(manifest))
    assert load_or_make_split(path, samples, 0, 0.2, 0.2, True).assignment[0] == manifest["images"][0]["split"]
    with pytest.raises(DermabenchError, match="different images, lesion ids or labels"):
        load_or_make_split(path, samples[:-1], 0, 0.2, 0.2, True)


def test_a_manifest_is_not_reused_once_a_lesion_id_or_label_changed(tmp_path):
    samples = fixture_samples()
    path = tmp_path / "split.json"
    load_or_make_split(path, samples, 0, 0.2, 0.2, True)
    # the same image ids: one image moved to another lesion, then one relabelled
    moved = [replace(samples[0], meta={**samples[0].meta, "lesion_id": "a-lesion-fixed-since"}), *samples[1:]]
    relabelled = [replace(samples[0], label=1 - samples[0].label), *samples[1:]]
    for changed in (moved, relabelled):
        with pytest.raises(DermabenchError, match="different images, lesion ids or labels"):
            load_or_make_split(path, changed, 0, 0.2, 0.2, True)
    assert load_or_make_split(path, samples, 0, 0.2, 0.2, True) is not None


def test_too_few_lesions_is_a_clear_error():
    samples = [Sample(BLANK, 0, meta={"image_id": f"b{i}"}) for i in range(20)]
    samples += [Sample(BLANK, 1, meta={"image_id": "m0"})]
    with pytest.raises(DermabenchError, match="only 1 malignant lesion"):
        grouped_split(samples, 0, 0.2, 0.2)


def test_duplicate_image_ids_refused():
    samples = fixture_samples()
    samples.append(samples[0])
    with pytest.raises(DermabenchError, match="duplicate image ids"):
        grouped_split(samples, 0, 0.2, 0.2)


@pytest.mark.skipif(not (HAM / "HAM10000_metadata.csv").is_file(), reason="HAM10000 not in ../shared/data")
def test_no_lesion_leaks_on_real_ham10000_metadata():
    with open(HAM / "HAM10000_metadata.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    malignant = {"mel", "bcc", "akiec"}
    samples = [
        Sample(BLANK, int(r["dx"] in malignant), meta={"image_id": r["image_id"], "lesion_id": r["lesion_id"]})
        for r in rows
    ]
    split = grouped_split(samples, seed=0, val_fraction=0.2, test_fraction=0.2)
    sides = sides_per_group(split)
    assert len(sides) == 7470
    assert all(len(s) == 1 for s in sides.values())
    labels = np.array([s.label for s in samples])
    for name in ("train", "val", "test"):
        assert abs(labels[split.indices(name)].mean() - labels.mean()) < 0.02


def test_official_split_wins_when_every_sample_has_one(tmp_path):
    names = ["train", "val", "test"]
    samples = [Sample(BLANK, i % 2, meta={"image_id": f"i{i}", "official_split": names[i % 3]}) for i in range(30)]
    split = load_or_make_split(tmp_path / "m.json", samples, 0, 0.2, 0.2, True)
    assert list(split.assignment) == [names[i % 3] for i in range(30)]
    assert not (tmp_path / "m.json").exists()
    cross = load_or_make_split(tmp_path / "m.json", samples, 0, 0.2, 0.2, False)
    assert "test" not in cross.assignment and cross.assignment[2] == "unused"


def test_a_split_says_where_it_came_from_and_which_lesions_straddle_it(tmp_path):
    """An official split may put one lesion's photographs in train and test; ours never does."""
    names = ["train", "test", "val"]
    samples = [
        Sample(BLANK, i % 2, meta={"image_id": f"i{i}", "official_split": names[i % 3],
                                   **({"lesion_id": f"L{i // 2}"} if i < 20 else {})})  # fmt: skip
        for i in range(30)
    ]
    official = load_or_make_split(tmp_path / "m.json", samples, 0, 0.2, 0.2, True).describe()
    # lesions L0..L9 hold images i = 2k, 2k+1, whose official splits differ for every k
    assert official == {
        "source": "official", "grouped_by": {"lesion_id": 20, "patient_id": 0, "image": 10}, "groups_on_two_sides": 10
    }  # fmt: skip
    ours = [Sample(BLANK, s.label, meta={k: v for k, v in s.meta.items() if k != "official_split"}) for s in samples]
    grouped = grouped_split(ours, seed=0, val_fraction=0.2, test_fraction=0.2).describe()
    assert grouped["source"] == "grouped" and grouped["groups_on_two_sides"] == 0
