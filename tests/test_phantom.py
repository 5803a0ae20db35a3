"""The embedded `phantom` dataset and the labelled image grids."""

from __future__ import annotations

import importlib.metadata
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

import dermabench
from dermabench.grids import image_grid, save_grid
from dermabench_plugins.phantom import COLOURS, STRUCTURES, PhantomDataset, register_datasets


def _images(ds: PhantomDataset) -> list[bytes]:
    return [s.image.tobytes() for s in ds.samples()]


@pytest.fixture(scope="module")
def lesions() -> tuple[np.ndarray, list[dict]]:
    """One (label, meta) per lesion from 6000 images, without drawing (records() is metadata only)."""
    first: dict[str, tuple[int, dict]] = {}
    for label, meta in PhantomDataset(n=6000, seed=0).records():
        first.setdefault(meta["lesion_id"], (label, meta))
    labels = np.array([label for label, _ in first.values()])
    return labels, [meta for _, meta in first.values()]


# --------------------------------------------------------------------------- determinism, sizes


def test_same_seed_gives_identical_bytes_and_meta():
    a = list(PhantomDataset(n=16, seed=3).samples())
    b = list(PhantomDataset(n=16, seed=3).samples())
    assert [s.image.tobytes() for s in a] == [s.image.tobytes() for s in b]
    assert [dict(s.meta) for s in a] == [dict(s.meta) for s in b]
    assert [s.label for s in a] == [s.label for s in b]


def test_different_seed_gives_different_images():
    a, b = _images(PhantomDataset(n=8, seed=0)), _images(PhantomDataset(n=8, seed=1))
    assert all(x != y for x, y in zip(a, b))


def test_sample_i_does_not_depend_on_n():
    short, long = list(PhantomDataset(n=25).samples()), list(PhantomDataset(n=50).samples())
    assert len(short) == 25 and len(long) == 50
    assert [s.image.tobytes() for s in short] == [s.image.tobytes() for s in long[:25]]
    metas_200 = [m for _, m in PhantomDataset(n=200).records()]
    metas_400 = [m for _, m in PhantomDataset(n=400).records()]
    assert metas_200 == metas_400[:200]


def test_records_match_samples():
    ds = PhantomDataset(n=12, seed=5)
    records = list(ds.records())
    samples = list(ds.samples())
    assert [label for label, _ in records] == [s.label for s in samples]
    for (_, meta), sample in zip(records, samples):
        assert meta.items() <= dict(sample.meta).items()


@pytest.mark.parametrize("size", [32, 64, 100])
def test_size_and_mode(size):
    samples = list(PhantomDataset(n=4, size=size).samples())
    assert len(samples) == 4
    assert all(s.image.mode == "RGB" and s.image.size == (size, size) for s in samples)


def test_larger_sizes_show_the_same_scene():
    small = [np.asarray(s.image, float) for s in PhantomDataset(n=6, size=64).samples()]
    large = [
        np.asarray(s.image.resize((64, 64), Image.Resampling.BOX), float)
        for s in PhantomDataset(n=6, size=128).samples()
    ]
    other = [np.asarray(s.image, float) for s in PhantomDataset(n=6, size=64, seed=9).samples()]
    same = [np.abs(a - b).mean() for a, b in zip(small, large)]
    diff = [np.abs(a - b).mean() for a, b in zip(small, other)]
    assert max(same) < 6, same  # a few grey levels: noise and anti-aliasing only
    assert min(diff) > max(same)


def test_images_show_a_darker_lesion_on_skin():
    images = [np.asarray(s.image, float).mean(axis=2) for s in PhantomDataset(n=30, seed=2).samples()]
    assert all(img.std() > 3 for img in images)  # never a flat colour
    # the lesion sits near the centre and is darker than the typical (skin) pixel
    darker = [img[26:38, 26:38].mean() < np.median(img) - 5 for img in images]
    assert np.mean(darker) > 0.8


def test_string_options_are_coerced():
    ds = PhantomDataset(n="7", size="48", seed="2")
    assert (ds.n, ds.size, ds.seed) == (7, 48, 2)
    assert len(ds) == 7 and len(list(ds.samples())) == 7


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"colour": "red"}, "colour"),
        ({"n": "many"}, "n"),
        ({"n": "0"}, "n"),
        ({"size": "-3"}, "size"),
        ({"size": "64.5"}, "size"),
        ({"seed": "x"}, "seed"),
    ],
)
def test_bad_option_raises_naming_it(options, named):
    with pytest.raises(dermabench.DermabenchError, match=named):
        PhantomDataset(**options)


def test_unknown_option_suggests_the_close_one():
    with pytest.raises(dermabench.DermabenchError, match="unknown option 'sizes'.*Did you mean 'size'"):
        PhantomDataset(sizes="64")


def test_registered_as_a_plugin():
    seen = []
    register_datasets(seen.append)
    assert seen == [PhantomDataset]
    assert PhantomDataset.name == "phantom" and PhantomDataset.description
    assert issubclass(PhantomDataset, dermabench.Dataset)
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="dermabench")}
    assert eps.get("phantom") == "dermabench_plugins.phantom"


# --------------------------------------------------------------------------- grouping and meta


def test_meta_fields_and_ranges():
    records = list(PhantomDataset(n=300, seed=1).records())
    ids = [m["image_id"] for _, m in records]
    assert len(set(ids)) == len(ids)
    for label, m in records:
        assert m["dx"] == ("phantom_malignant" if label else "phantom_benign")
        assert m["fitzpatrick"] in range(1, 7)
        assert 0 <= m["asymmetry"] <= 1 and 0 <= m["border_irregularity"] <= 1
        assert m["asymmetry_axes"] in (0, 1, 2) and 0 <= m["border_score"] <= 8
        assert m["n_colours"] == len(m["colours"]) and 1 <= m["n_colours"] <= 6
        assert set(m["colours"]) <= set(COLOURS)
        assert m["n_structures"] == len(m["structures"]) and 1 <= m["n_structures"] <= 5
        assert set(m["structures"]) <= set(STRUCTURES)
        assert 2 <= m["diameter_mm"] <= 18
        assert isinstance(m["site"], str) and m["sex"] in ("male", "female")
        if "regression areas" in m["structures"]:
            assert "white" in m["colours"]
    fitz = {m["fitzpatrick"] for _, m in records}
    assert len(fitz) >= 5  # every skin type turns up in a few hundred images


def test_several_views_per_lesion_and_lesions_within_one_patient():
    records = list(PhantomDataset(n=3000).records())
    views, patient_of, lesions_of = defaultdict(int), defaultdict(set), defaultdict(set)
    label_of = defaultdict(set)
    for label, m in records:
        views[m["lesion_id"]] += 1
        patient_of[m["lesion_id"]].add(m["patient_id"])
        lesions_of[m["patient_id"]].add(m["lesion_id"])
        label_of[m["lesion_id"]].add(label)
    assert all(len(p) == 1 for p in patient_of.values())  # a lesion never straddles patients
    assert all(len(v) == 1 for v in label_of.values())  # views of a lesion share its label
    counts = np.array(list(views.values()))
    assert counts.max() == 3 and 1.4 < counts.mean() < 2.1
    per_patient = np.array([len(v) for v in lesions_of.values()])
    assert per_patient.max() >= 4 and 1.6 < per_patient.mean() < 2.6
    # the views of one lesion are different photographs of the same lesion
    first_two = [s for s in PhantomDataset(n=12).samples()]
    by_lesion = defaultdict(list)
    for s in first_two:
        by_lesion[s.meta["lesion_id"]].append(s)
    pair = next(v for v in by_lesion.values() if len(v) >= 2)
    assert pair[0].image.tobytes() != pair[1].image.tobytes()
    assert pair[0].meta["diameter_mm"] == pair[1].meta["diameter_mm"]


# --------------------------------------------------------------------------- the label model


def test_prevalence_in_the_stated_band(lesions):
    labels, _ = lesions
    assert len(labels) > 3000
    assert 0.20 <= labels.mean() <= 0.30


def test_malignant_lesions_look_worse(lesions):
    labels, metas = lesions
    mal, ben = labels == 1, labels == 0
    for key in ("asymmetry", "border_irregularity", "n_colours", "n_structures", "diameter_mm", "border_score"):
        values = np.array([m[key] for m in metas], float)
        assert values[mal].mean() > values[ben].mean() + 0.1 * values.std(), key
    black = np.array(["black" in m["colours"] for m in metas])
    assert black[mal].mean() > 2 * black[ben].mean()


def test_attributes_predict_the_label_well_but_not_perfectly(lesions):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    labels, metas = lesions
    x = np.array(
        [
            [m["asymmetry"], m["border_irregularity"], m["border_score"], m["n_colours"], m["n_structures"],
             np.log(m["diameter_mm"]), m["atypical_network"]]
            + [c in m["colours"] for c in COLOURS] + [s in m["structures"] for s in STRUCTURES]
            for m in metas
        ],
        float,
    )  # fmt: skip
    half = len(labels) // 2  # lesions are in patient order, so the halves share no patient
    model = LogisticRegression(max_iter=2000).fit(x[:half], labels[:half])
    auc = roc_auc_score(labels[half:], model.predict_proba(x[half:])[:, 1])
    assert 0.80 <= auc <= 0.97, auc
    # the noiseless dermoscopy score alone is about as good: the rest is label noise
    tds_auc = roc_auc_score(labels, [m["abcd_score"] for m in metas])
    assert 0.80 <= tds_auc <= 0.97 and abs(tds_auc - auc) < 0.05


def test_skin_type_is_not_a_shortcut(lesions):
    labels, metas = lesions
    fitz = np.array([m["fitzpatrick"] for m in metas])
    light, dark = labels[fitz <= 2].mean(), labels[fitz >= 4].mean()
    assert abs(light - dark) < 0.08


# --------------------------------------------------------------------------- grids


def _solid(colour, size=(40, 30)):
    return Image.new("RGB", size, colour)


def test_save_grid_writes_a_png_of_the_expected_size(tmp_path):
    rows = [("benign", [_solid((255, 0, 0))] * 3), ("malignant", [_solid((0, 0, 255))] * 2)]
    out = save_grid(rows, tmp_path / "sub" / "grid.png", cell=50)
    assert out == tmp_path / "sub" / "grid.png"
    with Image.open(out) as png:
        assert png.format == "PNG" and png.mode == "RGB"
        size = png.size
        pixels = png.load()
        expected = image_grid(rows, cell=50)
        assert size == expected.size
        assert size[1] == 4 + 2 * (50 + 4)  # two rows of 50 px cells and 4 px gaps, no title
        assert size[0] > 3 * (50 + 4) + 20  # three cells plus a label column
        # the centre of the last cell of row 0 is red; of row 1 it is an empty (grey) cell
        x_last = size[0] - 4 - 25
        assert pixels[x_last, 4 + 25] == (255, 0, 0)
        assert pixels[x_last, 4 + 54 + 25] == (236, 236, 236)
        assert pixels[x_last - 54, 4 + 54 + 25] == (0, 0, 255)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["grid.png"]  # no temp file left


def test_grid_title_adds_a_line_and_images_keep_aspect():
    rows = [("x", [_solid((0, 200, 0), (80, 40))])]
    plain, titled = image_grid(rows, cell=40), image_grid(rows, cell=40, title="phantom")
    assert titled.size[1] > plain.size[1]
    # an 80x40 image in a 40 px cell becomes 40x20, centred: rows above and below stay background
    left = plain.size[0] - 4 - 40
    assert plain.getpixel((left + 20, 4 + 20)) == (0, 200, 0)
    assert plain.getpixel((left + 20, 4 + 3)) == (255, 255, 255)


def test_grid_rejects_bad_input(tmp_path):
    with pytest.raises(dermabench.DermabenchError):
        save_grid([], tmp_path / "g.png")
    with pytest.raises(dermabench.DermabenchError):
        image_grid([("a", [_solid((0, 0, 0))])], cell=0)
    assert not list(tmp_path.iterdir())


def test_grid_of_phantom_samples(tmp_path):
    samples = list(PhantomDataset(n=20, size=32).samples())
    rows = [
        (name, [s.image for s in samples if s.label == label][:4]) for label, name in ((0, "benign"), (1, "malignant"))
    ]
    out = save_grid(rows, tmp_path / "preview.png", cell=32, title="phantom")
    with Image.open(out) as png:
        assert png.size == image_grid(rows, cell=32, title="phantom").size


def test_a_data_dir_is_refused_not_silently_ignored(tmp_path):
    """`--data-dir` without `--dataset`: the user meant their data, not the embedded phantom."""
    from dermabench.errors import DermabenchError

    with pytest.raises(DermabenchError, match=r"dataset .phantom. renders its images .* \(--dataset ham10000"):
        PhantomDataset(data_dir=str(tmp_path))
