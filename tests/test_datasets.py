"""The dataset plugins for real data (ham10000, isic, imagefolder, dermamnist) and `dermabench data check`.

Every fixture folder is built here, in tmp_path, from tiny images; the real
HAM10000 folder is used only when present (../shared/data/ham10000 or
$DERMABENCH_HAM10000) and never copied.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dermabench
from dermabench import plugins
from dermabench.data_check import check, format_report
from dermabench.errors import DermabenchError
from dermabench.image_cache import ImageCache
from dermabench.images import normalise_samples, to_square_rgb
from dermabench_plugins.dermamnist import DermaMNISTDataset
from dermabench_plugins.ham10000 import HAM10000Dataset
from dermabench_plugins.imagefolder import ImageFolderDataset
from dermabench_plugins import tabular_images
from dermabench_plugins.isic import ISICDataset
from dermabench_plugins.tabular_images import label_map

REPO = Path(__file__).resolve().parents[1]
HAM_DIR = Path(os.environ.get("DERMABENCH_HAM10000") or REPO.parent / "shared" / "data" / "ham10000")
HAM_PRESENT = (HAM_DIR / "HAM10000_metadata.csv").is_file()

HAM_HEADER = "lesion_id,image_id,dx,dx_type,age,sex,localization"


# --------------------------------------------------------------------------- tiny files


def jpeg(path: Path, color=(200, 120, 80), size=(20, 15)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, "JPEG")
    return path


def png(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "PNG")
    return path


def truncated_jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "JPEG", quality=95)
    data = buffer.getvalue()
    path.write_bytes(data[: int(len(data) * 0.6)])
    return path


def odd_modes(folder: Path) -> dict[str, Path]:
    """One image per mode the host must convert: grayscale, palette, RGBA, CMYK (JPEG), 16-bit."""
    gray16 = Image.fromarray((np.arange(300, dtype=np.uint16).reshape(15, 20) * 200))
    return {
        "gray": png(folder / "gray.png", Image.new("L", (20, 15), 90)),
        "palette": png(folder / "palette.png", Image.new("RGB", (20, 15), (10, 200, 30)).convert("P")),
        "rgba": png(folder / "rgba.png", Image.new("RGBA", (20, 15), (10, 20, 200, 128))),
        "cmyk": (lambda p: (Image.new("CMYK", (20, 15), (0, 80, 160, 10)).save(p, "JPEG"), p)[1])(
            folder / "cmyk.jpg"
        ),
        "gray16": png(folder / "gray16.png", gray16),
    }


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def ham_folder(root: Path, dxs: dict[str, str], images: str = "images", csv_name="HAM10000_metadata.csv") -> Path:
    """A HAM-format folder: one JPEG per id, lesion ids paired two images a lesion."""
    rows = []
    for i, (image_id, dx) in enumerate(dxs.items()):
        jpeg(root / images / f"{image_id}.jpg", color=(i * 7 % 256, 100, 50))
        rows.append(f"HAM_{i // 2:04d},{image_id},{dx},histo,{40 + i}.0,female,back")
    write_csv(root / csv_name, HAM_HEADER, rows)
    return root


def loaded(dataset) -> list[dermabench.Sample]:
    return list(dataset.samples())


# --------------------------------------------------------------------------- registration


def test_the_four_datasets_are_registered_through_entry_points():
    found = plugins.registered("dataset")
    for name, cls in [("ham10000", HAM10000Dataset), ("isic", ISICDataset), ("imagefolder", ImageFolderDataset),
                      ("dermamnist", DermaMNISTDataset)]:  # fmt: skip
        assert found[name].cls is cls
        assert cls.description and "\n" not in cls.description


@pytest.mark.parametrize("cls", [HAM10000Dataset, ISICDataset, ImageFolderDataset, DermaMNISTDataset])
def test_missing_or_bad_data_dir_names_the_flag(cls, tmp_path):
    with pytest.raises(DermabenchError, match="--data-dir"):
        cls()
    with pytest.raises(DermabenchError, match=r"--data-dir .*nowhere.* does not exist"):
        cls(data_dir=str(tmp_path / "nowhere"))
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(DermabenchError, match=r"--data-dir .*file\.txt"):
        cls(data_dir=str(a_file))


@pytest.mark.parametrize("cls", [HAM10000Dataset, ISICDataset, ImageFolderDataset, DermaMNISTDataset])
def test_unknown_options_name_the_dataset_and_option(cls, tmp_path):
    with pytest.raises(DermabenchError, match=rf"dataset '{cls.name}': unknown option 'colour'"):
        cls(data_dir=str(tmp_path), colour="red")


def test_bad_option_values_are_errors(tmp_path):
    ham_folder(tmp_path, {"a": "mel", "b": "nv"})
    with pytest.raises(DermabenchError, match=r"option 'malignant' must be comma-separated words, got ' , ' \(--dataset-opt malignant="):
        HAM10000Dataset(data_dir=str(tmp_path), malignant=" , ")
    with pytest.raises(DermabenchError, match="option 'csv'.*is not a file"):
        HAM10000Dataset(data_dir=str(tmp_path), csv="nope.csv")
    with pytest.raises(DermabenchError, match="option 'images'.*is not a directory"):
        HAM10000Dataset(data_dir=str(tmp_path), images="nope")


# --------------------------------------------------------------------------- ham10000


def test_ham10000_loads_images_and_metadata(tmp_path):
    ham_folder(tmp_path, {"ISIC_1": "mel", "ISIC_2": "nv", "ISIC_3": "bcc", "ISIC_4": "bkl", "ISIC_5": "akiec"})
    dataset = HAM10000Dataset(data_dir=str(tmp_path))
    samples = loaded(dataset)
    assert [s.meta["image_id"] for s in samples] == ["ISIC_1", "ISIC_2", "ISIC_3", "ISIC_4", "ISIC_5"]
    assert [s.label for s in samples] == [1, 0, 1, 0, 1]
    first = samples[0].meta
    assert first == {"image_id": "ISIC_1", "dx": "mel", "lesion_id": "HAM_0000", "dx_type": "histo",
                     "sex": "female", "site": "back", "age": 40.0}  # fmt: skip
    assert all(isinstance(s.image, Image.Image) and s.image.size == (20, 15) for s in samples)
    report = dataset.report
    assert report["complete"] and report["n_loaded"] == 5
    assert report["label_counts"] == {"benign": 2, "malignant": 3}
    assert report["dx_counts"] == {"akiec": 1, "bcc": 1, "bkl": 1, "mel": 1, "nv": 1}
    json.dumps(report)  # serialisable


@pytest.mark.parametrize("layout", ["flat", "images", "parts"])
def test_ham10000_finds_images_at_any_depth(tmp_path, layout):
    dxs = {"ISIC_1": "mel", "ISIC_2": "nv", "ISIC_3": "nv"}
    if layout == "parts":  # the Dataverse download: two folders of images, CSV at the top
        ham_folder(tmp_path, {"ISIC_1": "mel"}, images="HAM10000_images_part_1")
        jpeg(tmp_path / "HAM10000_images_part_2" / "deeper" / "ISIC_2.jpg")
        jpeg(tmp_path / "HAM10000_images_part_2" / "ISIC_3.jpg")
        write_csv(tmp_path / "HAM10000_metadata.csv", HAM_HEADER,
                  [f"L{i},{k},{v},histo,50,male,back" for i, (k, v) in enumerate(dxs.items())])  # fmt: skip
    else:
        ham_folder(tmp_path, dxs, images="." if layout == "flat" else "images")
    dataset = HAM10000Dataset(data_dir=str(tmp_path))
    assert sorted(s.meta["image_id"] for s in loaded(dataset)) == ["ISIC_1", "ISIC_2", "ISIC_3"]


def test_ham10000_age_sex_and_missing_columns(tmp_path):
    jpeg(tmp_path / "a.jpg")
    jpeg(tmp_path / "b.jpg")
    write_csv(tmp_path / "meta.csv", "image_id,dx,age", ["a,mel,", "b,nv,nan"])
    samples = loaded(HAM10000Dataset(data_dir=str(tmp_path)))
    assert [s.meta for s in samples] == [{"image_id": "a", "dx": "mel", "age": None},
                                         {"image_id": "b", "dx": "nv", "age": None}]  # fmt: skip


def test_csv_auto_discovery_depth_and_ambiguity(tmp_path):
    ham_folder(tmp_path, {"a": "mel", "b": "nv"}, csv_name="meta/deeper/HAM10000_metadata.csv")
    (tmp_path / "notes.csv").write_text("what,ever\n1,2\n")  # not a candidate: lacks image_id, dx
    dataset = HAM10000Dataset(data_dir=str(tmp_path))
    assert dataset.report["csv"].endswith("meta/deeper/HAM10000_metadata.csv")

    write_csv(tmp_path / "ISIC2018_Task3_Test_GroundTruth.csv", HAM_HEADER + ",dataset",
              ["L9,a,mel,histo,50,male,back,vidir"])  # fmt: skip
    with pytest.raises(DermabenchError) as error:
        HAM10000Dataset(data_dir=str(tmp_path))
    message = str(error.value)
    assert "2 candidate metadata CSVs" in message and "csv=PATH" in message
    assert "ISIC2018_Task3_Test_GroundTruth.csv" in message and "meta/deeper/HAM10000_metadata.csv" in message

    chosen = HAM10000Dataset(data_dir=str(tmp_path), csv="meta/deeper/HAM10000_metadata.csv")
    assert len(loaded(chosen)) == 2


def test_csv_too_deep_or_absent_is_an_error_listing_what_was_found(tmp_path):
    ham_folder(tmp_path, {"a": "mel", "b": "nv"}, csv_name="x/y/z/HAM10000_metadata.csv")
    (tmp_path / "labels.csv").write_text("file,class\n")
    with pytest.raises(DermabenchError, match=r"no metadata CSV with columns image_id and dx.*labels\.csv.*csv=PATH"):
        HAM10000Dataset(data_dir=str(tmp_path))
    assert len(loaded(HAM10000Dataset(data_dir=str(tmp_path), csv="x/y/z/HAM10000_metadata.csv"))) == 2


def test_images_option_points_elsewhere(tmp_path):
    ham_folder(tmp_path / "meta", {"a": "mel", "b": "nv"}, images="../pictures")
    dataset = HAM10000Dataset(data_dir=str(tmp_path / "meta"), images=str(tmp_path / "pictures"))
    assert len(loaded(dataset)) == 2


def broken_and_odd_folder(root: Path, extra_rows: list[str] = ()) -> Path:
    """Good JPEGs of both classes, every odd mode, and three broken files, in a HAM-format folder."""
    images = root / "images"
    rows = []
    for i, (image_id, dx) in enumerate([("good_mel", "mel"), ("good_nv", "nv"), ("good_bcc", "bcc")]):
        jpeg(images / f"{image_id}.jpg", color=(40 * i, 90, 200 - 30 * i), size=(30, 20))
        rows.append(f"L_{image_id},{image_id},{dx},histo,50,male,back")
    for mode, path in odd_modes(images).items():
        rows.append(f"L_{mode},{path.stem},nv,histo,50,male,back")
    truncated_jpeg(images / "truncated.jpg")
    (images / "zero.jpg").write_bytes(b"")
    (images / "text.jpg").write_text("this is not an image\n")
    rows += [f"L_{x},{x},nv,histo,50,male,back" for x in ("truncated", "zero", "text")]
    write_csv(root / "HAM10000_metadata.csv", HAM_HEADER, rows + list(extra_rows))
    return root



def test_the_load_report_counts_every_problem_exactly(tmp_path):
    """Broken files of every kind, duplicates, missing images, orphans and unknown dx, all counted."""
    images = tmp_path / "images"
    broken_and_odd_folder(tmp_path, extra_rows=[
        "L_dup,good_mel,mel,histo,50,male,back",  # the same id on a second row
        "L_missing,missing_1,nv,histo,50,male,back",  # a row without an image
        "L_weird,weird,xyz,histo,50,male,back",  # unknown dx: excluded, never guessed
    ])  # fmt: skip
    jpeg(images / "other_part" / "good_nv.jpg")  # the same id as a second file
    jpeg(images / "orphan.jpg")  # an image without a row
    jpeg(images / "weird.jpg")
    (images / ".hidden.jpg").write_bytes(b"")  # dot-files are not images
    (images / "readme.txt").write_text("ignored")

    dataset = HAM10000Dataset(data_dir=str(tmp_path))
    report = dataset.report
    assert report["n_rows"] == 14
    assert report["n_images_found"] == 14
    assert report["n_usable"] == 11  # 3 good + 5 odd modes + 3 broken
    assert report["complete"] is False
    samples = loaded(dataset)
    assert report["complete"] is True
    assert report["n_loaded"] == len(samples) == 8
    assert report["dx_counts"] == {"nv": 6, "bcc": 1, "mel": 1}
    assert report["label_counts"] == {"benign": 6, "malignant": 2}
    assert report["unknown_dx"] == {"xyz": 1}
    assert report["excluded_dx"] == {}
    assert report["missing_images"] == ["missing_1"]
    assert report["images_without_metadata"] == ["images/orphan.jpg"]
    assert report["duplicate_ids"] == ["good_mel", "good_nv"]
    undecodable = dict(report["undecodable"])
    assert set(undecodable) == {"images/truncated.jpg", "images/zero.jpg", "images/text.jpg"}
    assert undecodable["images/zero.jpg"] == "empty file (0 bytes)"
    assert "truncated" in undecodable["images/truncated.jpg"]
    assert "identify" in undecodable["images/text.jpg"]
    assert report["converted_modes"] == {"CMYK": 1, "I;16": 1, "L": 1, "P": 1, "RGBA": 1} or set(
        report["converted_modes"]
    ) == {"CMYK", "L", "P", "RGBA", "I"}  # PIL < 10 reads 16-bit PNGs as "I"
    # the first file of a duplicated id (sorted path order) is the one used
    good_nv = next(s for s in samples if s.meta["image_id"] == "good_nv")
    assert good_nv.meta["lesion_id"] == "L_good_nv"

    text = format_report(report)
    for fragment in ("unknown dx (excluded): xyz 1", "metadata rows without an image: 1: missing_1",
                     "images without a metadata row: 1", "duplicate image ids (first kept): 2",
                     "undecodable images (rejected): 3", "not RGB (the host converts them)"):  # fmt: skip
        assert fragment in text


def test_odd_modes_pass_through_and_the_host_makes_them_rgb(tmp_path):
    paths = odd_modes(tmp_path / "benign")
    jpeg(tmp_path / "malignant" / "m.jpg")
    samples = loaded(ImageFolderDataset(data_dir=str(tmp_path)))
    modes = {Path(s.meta["image_id"]).stem: s.image.mode for s in samples}
    assert modes["gray"] == "L" and modes["palette"] == "P" and modes["rgba"] == "RGBA" and modes["cmyk"] == "CMYK"
    assert modes["gray16"] in ("I;16", "I")
    assert len(samples) == len(paths) + 1
    for sample in samples:
        image, _ = to_square_rgb(sample.image, 16)
        assert image.mode == "RGB" and image.size == (16, 16)
        assert np.asarray(image).dtype == np.uint8


def test_decompression_bomb_guard_rejects_oversized_images(tmp_path, monkeypatch):
    ham_folder(tmp_path, {"small_mel": "mel", "small_nv": "nv"})  # 20×15 = 300 px
    png(tmp_path / "images" / "bomb.png", Image.new("RGB", (100, 100)))  # 10,000 px > 2 × limit: PIL's error
    png(tmp_path / "images" / "warn.png", Image.new("RGB", (40, 40)))  # 1,600 px in (limit, 2 × limit]: PIL's warning
    rows = (tmp_path / "HAM10000_metadata.csv").read_text().splitlines()
    rows += ["L_b,bomb,nv,histo,1,male,back", "L_w,warn,nv,histo,1,male,back"]
    (tmp_path / "HAM10000_metadata.csv").write_text("\n".join(rows) + "\n")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    dataset = HAM10000Dataset(data_dir=str(tmp_path))
    assert sorted(s.meta["image_id"] for s in loaded(dataset)) == ["small_mel", "small_nv"]
    reasons = dict(dataset.report["undecodable"])
    assert set(reasons) == {"images/bomb.png", "images/warn.png"}
    assert all("decompression bomb" in reason for reason in reasons.values())


# --------------------------------------------------------------------------- label mapping


def test_default_label_mapping():
    mapping = label_map("x")
    assert mapping.malignant == {"mel", "bcc", "akiec", "ak", "scc"}
    assert mapping.benign == {"nv", "bkl", "df", "vasc"}


def test_label_mapping_override(tmp_path):
    ham_folder(tmp_path, {"a": "mel", "b": "bcc", "c": "nv", "d": "akiec", "e": "bkl", "f": "lentigo"})

    def labels(**options):
        dataset = HAM10000Dataset(data_dir=str(tmp_path), **options)
        return {s.meta["image_id"]: s.label for s in loaded(dataset)}, dataset.report

    default, report = labels()
    assert default == {"a": 1, "b": 1, "c": 0, "d": 1, "e": 0}
    assert report["unknown_dx"] == {"lentigo": 1}

    mel_only, report = labels(malignant="mel")  # benign becomes every other known code
    assert mel_only == {"a": 1, "b": 0, "c": 0, "d": 0, "e": 0}
    assert report["mapping"]["malignant"] == ["mel"]

    named, report = labels(malignant="MEL, lentigo")  # naming a code makes it known
    assert named == {"a": 1, "b": 0, "c": 0, "d": 0, "e": 0, "f": 1}
    assert report["unknown_dx"] == {}

    both, report = labels(malignant="mel,bcc", benign="nv")
    assert both == {"a": 1, "b": 1, "c": 0}
    assert report["excluded_dx"] == {"akiec": 1, "bkl": 1}
    assert report["unknown_dx"] == {"lentigo": 1}

    benign_only, _ = labels(benign="nv,bkl,akiec")
    assert benign_only == {"a": 1, "b": 1, "c": 0, "d": 0, "e": 0}

    with pytest.raises(DermabenchError, match="mel named in both"):
        HAM10000Dataset(data_dir=str(tmp_path), malignant="mel", benign="mel,nv")


def test_an_empty_class_is_a_clear_error(tmp_path):
    ham_folder(tmp_path, {"a": "nv", "b": "bkl", "c": "xyz"})
    with pytest.raises(DermabenchError, match=r"dataset 'ham10000' has no malignant images.*malignant = .*mel"):
        HAM10000Dataset(data_dir=str(tmp_path))
    # a class that only empties on decoding fails once the samples are consumed
    ham_folder(tmp_path / "two", {"a": "nv", "b": "mel"})
    (tmp_path / "two" / "images" / "b.jpg").write_bytes(b"")
    dataset = HAM10000Dataset(data_dir=str(tmp_path / "two"))
    with pytest.raises(DermabenchError, match="has no decodable malignant images.*1 undecodable"):
        loaded(dataset)


# --------------------------------------------------------------------------- isic


ONE_HOT_2018 = "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC"
ONE_HOT_2019 = "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK"


def test_isic_2018_one_hot_with_lesion_groupings(tmp_path):
    folder = tmp_path / "ISIC2018_Task3_Training_Input"
    for i in range(4):
        jpeg(folder / f"ISIC_000000{i}.jpg")
    write_csv(tmp_path / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv",
              ONE_HOT_2018, ["ISIC_0000000,1.0,0.0,0.0,0.0,0.0,0.0,0.0",
                             "ISIC_0000001,0.0,1.0,0.0,0.0,0.0,0.0,0.0",
                             "ISIC_0000002,0.0,0.0,0.0,1.0,0.0,0.0,0.0",
                             "ISIC_0000003,0.0,1.0,1.0,0.0,0.0,0.0,0.0"])  # fmt: skip
    write_csv(tmp_path / "ISIC2018_Task3_Training_LesionGroupings.csv", "image,lesion_id,diagnosis_confirm_type",
              [f"ISIC_000000{i},HAM_{i // 2},histopathology" for i in range(4)])  # fmt: skip
    dataset = ISICDataset(data_dir=str(tmp_path))
    samples = loaded(dataset)
    assert [(s.meta["image_id"], s.meta["dx"], s.label, s.meta["lesion_id"]) for s in samples] == [
        ("ISIC_0000000", "mel", 1, "HAM_0"), ("ISIC_0000001", "nv", 0, "HAM_0"), ("ISIC_0000002", "akiec", 1, "HAM_1"),
    ]  # fmt: skip
    assert dataset.report["unknown_dx"] == {"(several: nv+bcc)": 1}
    assert dataset.report["metadata_csv"].endswith("LesionGroupings.csv")
    assert dataset.report["format"].startswith("one-hot")


def test_isic_2019_one_hot_with_metadata_scc_and_unk(tmp_path):
    names = ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002_downsampled", "ISIC_0000003", "ISIC_0000004"]
    for name in names[:4]:
        jpeg(tmp_path / "ISIC_2019_Training_Input" / f"{name}.jpg")
    png(tmp_path / "ISIC_2019_Training_Input" / f"{names[4]}.png", Image.new("RGB", (8, 8)))
    write_csv(tmp_path / "ISIC_2019_Training_GroundTruth.csv", ONE_HOT_2019, [
        f"{names[0]},0,0,0,0,0,0,0,1,0", f"{names[1]},0,1,0,0,0,0,0,0,0", f"{names[2]},0,0,0,1,0,0,0,0,0",
        f"{names[3]},0,0,0,0,0,0,0,0,1", f"{names[4]},0,0,0,0,0,1,0,0,0"])  # fmt: skip
    write_csv(tmp_path / "ISIC_2019_Training_Metadata.csv", "image,age_approx,anatom_site_general,lesion_id,sex",
              [f"{names[0]},55.0,anterior torso,BCN_1,female", f"{names[1]},,head/neck,,male"])  # fmt: skip
    dataset = ISICDataset(data_dir=str(tmp_path))
    samples = {s.meta["image_id"]: s for s in loaded(dataset)}
    assert {k: (s.meta["dx"], s.label) for k, s in samples.items()} == {
        names[0]: ("scc", 1), names[1]: ("nv", 0), names[2]: ("ak", 1), names[4]: ("df", 0)}  # fmt: skip
    assert samples[names[0]].meta == {"image_id": names[0], "dx": "scc", "lesion_id": "BCN_1", "sex": "female",
                                      "age": 55.0, "site": "anterior torso"}  # fmt: skip
    assert samples[names[1]].meta["lesion_id"] is None and samples[names[1]].meta["age"] is None
    assert dataset.report["unknown_dx"] == {"unk": 1}


@pytest.mark.parametrize(
    "header, rows, id_of",
    [
        ("image_id,melanoma,seborrheic_keratosis", ["ISIC_1,1.0,0.0", "ISIC_2,0.0,1.0", "ISIC_3,0.0,0.0"], None),
        ("isic_id,melanoma,patient_id", ["ISIC_1,1,P1", "ISIC_2,0,P1", "ISIC_3,0,P2"], None),
        ("image_name,patient_id,lesion_id,sex,age_approx,anatom_site_general_challenge,diagnosis,"
         "benign_malignant,target",
         ["ISIC_1,P1,L1,male,45,torso,melanoma,malignant,1", "ISIC_2,P1,L2,male,45,torso,nevus,benign,0",
          "ISIC_3,P2,L3,female,,head/neck,unknown,benign,0"], None),
        (None, ["ISIC_1,malignant", "ISIC_2,benign", "ISIC_3,benign"], None),  # ISIC 2016, no header row
        (None, ["ISIC_1,1.0", "ISIC_2,0.0", "ISIC_3,0.0"], None),
    ],
    ids=["2017", "isic_id", "2020", "2016-words", "2016-numbers"],
)
def test_isic_binary_melanoma_files(tmp_path, header, rows, id_of):
    jpeg(tmp_path / "images" / "ISIC_1.jpg")
    jpeg(tmp_path / "images" / "ISIC_2.jpeg")
    png(tmp_path / "images" / "ISIC_3.png", Image.new("RGB", (9, 9)))
    path = tmp_path / "GroundTruth.csv"
    path.write_text("\n".join(([header] if header else []) + rows) + "\n")
    dataset = ISICDataset(data_dir=str(tmp_path))
    samples = loaded(dataset)
    assert [(s.meta["image_id"], s.label, s.meta["dx"]) for s in samples] == [
        ("ISIC_1", 1, "mel"), ("ISIC_2", 0, "non-mel"), ("ISIC_3", 0, "non-mel")]  # fmt: skip
    assert dataset.report["format"].startswith("binary")
    if header and header.startswith("image_id"):
        assert [s.meta["diagnosis"] for s in samples] == ["melanoma", "seborrheic keratosis", "nevus"]
    if header and "lesion_id" in header:
        assert samples[1].meta["lesion_id"] == "L2" and samples[1].meta["patient_id"] == "P1"
        assert samples[1].meta["diagnosis"] == "nevus" and samples[2].meta["age"] is None
    if header and header.startswith("isic_id"):
        assert [s.meta["patient_id"] for s in samples] == ["P1", "P1", "P2"]


def test_isic_binary_refuses_dx_options_and_reports_bad_values(tmp_path):
    for i in (1, 2, 3):
        jpeg(tmp_path / f"ISIC_{i}.jpg")
    write_csv(tmp_path / "gt.csv", "image,melanoma", ["ISIC_1,1", "ISIC_2,0", "ISIC_3,0.5"])
    with pytest.raises(DermabenchError, match="option 'malignant' applies to one-hot"):
        ISICDataset(data_dir=str(tmp_path), malignant="mel")
    dataset = ISICDataset(data_dir=str(tmp_path))
    assert len(loaded(dataset)) == 2
    assert dataset.report["unknown_dx"] == {"(melanoma='0.5')": 1}


def test_isic_without_ground_truth_is_an_error(tmp_path):
    jpeg(tmp_path / "ISIC_1.jpg")
    write_csv(tmp_path / "meta.csv", "image,age_approx,sex", ["ISIC_1,50,male"])
    with pytest.raises(DermabenchError, match=r"no metadata CSV with an image column.*meta\.csv"):
        ISICDataset(data_dir=str(tmp_path))


# --------------------------------------------------------------------------- imagefolder


def test_imagefolder_subfolders(tmp_path):
    jpeg(tmp_path / "benign" / "b1.jpg")
    jpeg(tmp_path / "benign" / "nested" / "b2.png")
    jpeg(tmp_path / "malignant" / "m1.jpg")
    jpeg(tmp_path / "stray.jpg")
    dataset = ImageFolderDataset(data_dir=str(tmp_path))
    samples = loaded(dataset)
    assert sorted((s.meta["image_id"], s.label) for s in samples) == [
        ("benign/b1.jpg", 0), ("benign/nested/b2.png", 0), ("malignant/m1.jpg", 1)]  # fmt: skip
    assert dataset.report["layout"] == "subfolders"
    assert dataset.report["images_without_metadata"] == ["stray.jpg"]


def test_imagefolder_manifest(tmp_path):
    for name in ("a", "b", "c", "d"):
        jpeg(tmp_path / "pics" / f"{name}.jpg")
    write_csv(tmp_path / "manifest.csv", "path,label,lesion_id", [
        "pics/a.jpg,0,L1", "pics/b.jpg,malignant,L1", "./pics/c.jpg,Benign,",
        str(tmp_path / "pics" / "d.jpg") + ",1,L3",
        "pics/e.jpg,0,L4", "pics/a.jpg,0,L1", "pics/c.jpg,maybe,L5"])  # fmt: skip
    dataset = ImageFolderDataset(data_dir=str(tmp_path))
    samples = loaded(dataset)
    assert [(s.meta["image_id"], s.label, s.meta["lesion_id"]) for s in samples] == [
        ("pics/a.jpg", 0, "L1"), ("pics/b.jpg", 1, "L1"), ("pics/c.jpg", 0, None), ("pics/d.jpg", 1, "L3")]  # fmt: skip
    report = dataset.report
    assert report["layout"] == "manifest"
    assert report["missing_images"] == ["pics/e.jpg"]
    assert report["duplicate_ids"] == ["pics/a.jpg", "pics/c.jpg"]
    assert report["n_rows"] == 7


@pytest.mark.parametrize("bad", ["../outside.jpg", "pics/../../outside.jpg", "/etc/hostname", "link/outside.jpg"])
def test_imagefolder_manifest_paths_cannot_escape(tmp_path, bad):
    root = tmp_path / "data"
    jpeg(root / "pics" / "a.jpg")
    jpeg(tmp_path / "outside.jpg")
    (root / "link").symlink_to(tmp_path, target_is_directory=True)
    write_csv(root / "labels.csv", "path,label", ["pics/a.jpg,1", f"{bad},0"])
    with pytest.raises(DermabenchError, match=r"labels\.csv, line 3: path .* points outside"):
        ImageFolderDataset(data_dir=str(root))


def test_imagefolder_without_a_layout_explains_both(tmp_path):
    jpeg(tmp_path / "x.jpg")
    with pytest.raises(DermabenchError, match="neither benign/ and malignant/ subfolders nor a CSV manifest"):
        ImageFolderDataset(data_dir=str(tmp_path))


def test_imagefolder_ambiguous_manifests(tmp_path):
    jpeg(tmp_path / "a.jpg")
    jpeg(tmp_path / "b.jpg")
    write_csv(tmp_path / "one.csv", "path,label", ["a.jpg,0", "b.jpg,1"])
    write_csv(tmp_path / "sub" / "two.csv", "filename,label", ["a.jpg,0", "b.jpg,1"])
    with pytest.raises(DermabenchError, match=r"2 candidate metadata CSVs.*one\.csv.*sub/two\.csv"):
        ImageFolderDataset(data_dir=str(tmp_path))
    assert len(loaded(ImageFolderDataset(data_dir=str(tmp_path), csv="one.csv"))) == 2


# --------------------------------------------------------------------------- dermamnist


def dermamnist_npz(path: Path, labels: dict[str, list[int]], size: int = 28, **extra) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, values in labels.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (len(values), size, size, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.asarray(values, dtype=np.uint8).reshape(-1, 1)
    arrays.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def test_dermamnist_official_split_and_mapping(tmp_path):
    npz = dermamnist_npz(tmp_path / "dermamnist.npz", {"train": [0, 1, 2, 3, 4, 5, 6], "val": [4, 5], "test": [5, 7]})
    dataset = DermaMNISTDataset(data_dir=str(npz))
    samples = loaded(dataset)
    assert [s.meta["official_split"] for s in samples] == ["train"] * 7 + ["val"] * 2 + ["test"]
    assert [s.meta["dx"] for s in samples[:7]] == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert [s.label for s in samples[:7]] == [1, 1, 0, 0, 1, 0, 0]
    assert samples[0].meta["image_id"] == "dermamnist_train_00000"
    assert all(s.image.mode == "RGB" and s.image.size == (28, 28) for s in samples)
    with np.load(npz) as data:
        assert np.array_equal(np.asarray(samples[7].image), data["val_images"][0])
    assert dataset.report["unknown_dx"] == {"label 7": 1}
    assert dataset.report["n_rows"] == 11 and dataset.report["n_loaded"] == 10

    # a folder with exactly one .npz works too; splits and mapping options
    only = DermaMNISTDataset(data_dir=str(tmp_path), splits="val,train", malignant="mel")
    picked = loaded(only)
    assert {s.meta["official_split"] for s in picked} == {"train", "val"}
    assert [s.label for s in picked if s.meta["official_split"] == "train"] == [0, 0, 0, 0, 1, 0, 0]


def test_a_run_on_dermamnist_uses_its_split_and_says_it_is_by_image(tmp_path):
    """DermaMNIST has no lesion ids: the run keeps its official split, records so, and warns of the leak risk."""
    from in_test_plugins import RecordedProgress

    from dermabench.config import build_config
    from dermabench.protocol import run

    counts = {"train": 160, "val": 40, "test": 60}
    npz = dermamnist_npz(tmp_path / "d.npz", {name: [4, 5, 1, 2] * (n // 4) for name, n in counts.items()})
    progress = RecordedProgress()
    config = build_config(profile="smoke", out=str(tmp_path / "out"), dataset="dermamnist", data_dir=str(npz),
                          generator="augment", arms="real", n_real=1000)  # fmt: skip
    result = json.loads(run(config, progress).read_text())
    assert result["data"]["split"] == {
        "source": "official", "grouped_by": {"lesion_id": 0, "patient_id": 0, "image": 260}, "groups_on_two_sides": 0
    }  # fmt: skip
    assert (result["data"]["n_train_pool"], result["data"]["n_val"]) == (160, 40)
    assert "warning: 260 of 260 images carry no lesion_id or patient_id, so its official split is by image" in "".join(
        progress.lines
    )
    # and an --n-real beyond the train pool is said, and recorded as what was used
    assert result["arms"]["real"]["n_real"] == 160
    assert "warning: --n-real 1000 is more than the train pool's 160 images; the arms use all 160" in "".join(
        progress.lines
    )


def test_dermamnist_file_errors(tmp_path):
    dermamnist_npz(tmp_path / "a.npz", {"train": [0, 4], "val": [4], "test": [5]})
    dermamnist_npz(tmp_path / "b.npz", {"train": [0, 4], "val": [4], "test": [5]})
    with pytest.raises(DermabenchError, match=r"holds 2 \.npz files: a\.npz, b\.npz"):
        DermaMNISTDataset(data_dir=str(tmp_path))
    partial = dermamnist_npz(tmp_path / "p" / "x.npz", {"train": [0, 5]})
    with pytest.raises(DermabenchError, match="lacks val_images, val_labels, test_images, test_labels"):
        DermaMNISTDataset(data_dir=str(partial))
    assert len(loaded(DermaMNISTDataset(data_dir=str(partial), splits="train"))) == 2
    with pytest.raises(DermabenchError, match="option 'splits' must be one of train, val, test, got 'train,dev'"):
        DermaMNISTDataset(data_dir=str(partial), splits="train,dev")
    pickled = tmp_path / "q" / "x.npz"
    pickled.parent.mkdir()
    np.savez(pickled, train_images=np.array([object()], dtype=object), train_labels=np.zeros((1, 1)))
    with pytest.raises(DermabenchError, match="cannot read|must be"):
        DermaMNISTDataset(data_dir=str(pickled), splits="train")
    benign_only = dermamnist_npz(tmp_path / "r" / "x.npz", {"train": [5, 5], "val": [2], "test": [3]})
    with pytest.raises(DermabenchError, match="has no malignant images"):
        DermaMNISTDataset(data_dir=str(benign_only))


# --------------------------------------------------------------------------- data check


def test_data_check_on_a_fixture(tmp_path):
    ham_folder(tmp_path, {"a": "mel", "b": "nv", "c": "nv", "d": "bkl", "e": "zzz"})
    result = check("ham10000", str(tmp_path), {})
    assert result["n_images"] == 4
    assert result["n_lesions"] == 2  # lesion ids pair two images each: a,b | c,d
    assert result["n_groups"] == 2
    assert result["label_counts"] == {"benign": 3, "malignant": 1}
    assert result["dx_counts"] == {"nv": 2, "bkl": 1, "mel": 1}
    assert result["unknown_dx"] == {"zzz": 1}
    assert result["min_size"] == result["max_size"] == [20, 15]
    json.dumps(result)
    text = format_report(result)
    assert "images loaded: 4" in text and "lesions: 2 distinct lesion_id" in text
    assert "labels: benign 3, malignant 1" in text and "unknown dx (excluded): zzz 1" in text


def test_data_check_counts_official_splits(tmp_path):
    npz = dermamnist_npz(tmp_path / "d.npz", {"train": [0, 5, 5], "val": [4], "test": [5, 1]})
    result = check("dermamnist", str(npz), {"splits": "train,val,test"})
    assert result["official_split_counts"] == {"test": 2, "train": 3, "val": 1}
    assert result["n_lesions"] == 0 and result["n_groups"] == 6
    assert "official split: test 2, train 3, val 1" in format_report(result)


# --------------------------------------------------------------------------- the real HAM10000 folder

HAM_DX = {"nv": 6705, "mel": 1113, "bkl": 1099, "bcc": 514, "akiec": 327, "vasc": 142, "df": 115}


@pytest.mark.skipif(not HAM_PRESENT, reason=f"HAM10000 not found at {HAM_DIR} (set DERMABENCH_HAM10000)")
def test_real_ham10000_data_check():
    result = check("ham10000", str(HAM_DIR), {})
    assert result["n_images"] == result["n_loaded"] == 10_015
    assert result["n_lesions"] == 7_470
    assert result["dx_counts"] == HAM_DX
    assert result["label_counts"] == {"benign": 8_061, "malignant": 1_954}
    assert not result["undecodable"] and not result["missing_images"] and not result["unknown_dx"]
    text = format_report(result)
    assert "images loaded: 10015" in text and "lesions: 7470 distinct lesion_id" in text


# --------------------------------------------------------------------------- the image cache


def normalised(root: Path, size: int, cache: ImageCache | None):
    dataset = HAM10000Dataset(data_dir=str(root))
    if cache is not None:
        dataset.use_image_cache(cache)
    samples, report = normalise_samples(dataset.samples(), size, source="ham10000")
    return samples, report.to_dict(), dataset.report


def test_the_image_cache_returns_what_decoding_returns_and_decodes_nothing_twice(tmp_path, monkeypatch):
    root = broken_and_odd_folder(tmp_path / "data")
    plain, plain_report, plain_plugin = normalised(root, 16, None)
    first_cache = ImageCache(tmp_path / "cache", 16)
    first, first_report, first_plugin = normalised(root, 16, first_cache)
    assert (first_cache.hits, first_cache.misses) == (0, 11)

    opened = []
    monkeypatch.setattr(tabular_images, "open_image", lambda path: opened.append(path))
    second_cache = ImageCache(tmp_path / "cache", 16)
    second, second_report, second_plugin = normalised(root, 16, second_cache)
    assert opened == [] and (second_cache.hits, second_cache.misses) == (11, 0)

    for run in (first, second):
        assert [s.meta for s in run] == [s.meta for s in plain]
        for a, b in zip(run, plain):
            assert a.image.mode == "RGB" and np.array_equal(np.asarray(a.image), np.asarray(b.image))
    # conversions and rejections are reported the same, whether decoded or cached
    assert first_report == second_report == plain_report
    assert plain_report["converted_images"] == 5
    for key in ("undecodable", "converted_modes", "dx_counts", "label_counts"):
        assert first_plugin[key] == second_plugin[key] == plain_plugin[key]
    assert len(second_plugin["undecodable"]) == 3


def test_the_image_cache_is_keyed_by_content_and_size(tmp_path):
    root = broken_and_odd_folder(tmp_path / "data")
    normalised(root, 16, ImageCache(tmp_path / "cache", 16))
    # renamed (same bytes): a hit; edited (new bytes): a miss
    (root / "images" / "good_nv.jpg").rename(root / "images" / "moved.jpg")
    (root / "images" / "moved.jpg").rename(root / "images" / "good_nv.jpg")
    jpeg(root / "images" / "good_mel.jpg", color=(1, 2, 3), size=(30, 20))
    cache = ImageCache(tmp_path / "cache", 16)
    samples, _, _ = normalised(root, 16, cache)
    assert (cache.hits, cache.misses) == (10, 1)
    good_mel = next(s for s in samples if s.meta["image_id"] == "good_mel")
    assert np.abs(np.asarray(good_mel.image, dtype=int)[8, 8] - (1, 2, 3)).max() <= 3
    other_size = ImageCache(tmp_path / "cache", 24)
    normalised(root, 24, other_size)
    assert (other_size.hits, other_size.misses) == (0, 11)


def test_images_cached_by_another_resize_method_are_not_reused(tmp_path, monkeypatch):
    from dermabench import image_cache

    root = broken_and_odd_folder(tmp_path / "data")
    normalised(root, 16, ImageCache(tmp_path / "cache", 16))
    monkeypatch.setattr(image_cache, "RESIZE_METHOD", "a resize method of a later version")
    cache = ImageCache(tmp_path / "cache", 16)
    normalised(root, 16, cache)
    assert (cache.hits, cache.misses) == (0, 11)


def test_a_settled_unchanged_file_is_not_hashed_again_and_an_edited_one_is(tmp_path, monkeypatch):
    from dermabench import image_cache

    root = broken_and_odd_folder(tmp_path / "data")
    monkeypatch.setattr(ImageCache, "settle_seconds", 0.0)  # the files were written a moment ago
    normalised(root, 16, ImageCache(tmp_path / "cache", 16))
    hashed = []
    real_digest = image_cache.file_digest
    monkeypatch.setattr(image_cache, "file_digest", lambda path: hashed.append(Path(path).name) or real_digest(path))
    cache = ImageCache(tmp_path / "cache", 16)
    normalised(root, 16, cache)
    assert hashed == [] and (cache.hits, cache.misses) == (11, 0)

    # the same size and mtime, other bytes: the ctime still moves, so it is hashed again and misses
    time.sleep(0.05)
    target = root / "images" / "good_mel.jpg"
    before = target.stat()
    data = bytearray(target.read_bytes())
    data[-3] ^= 0xFF  # other bytes, same length
    target.write_bytes(bytes(data))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert target.stat().st_size == before.st_size and target.stat().st_mtime_ns == before.st_mtime_ns
    cache = ImageCache(tmp_path / "cache", 16)
    normalised(root, 16, cache)
    assert hashed == ["good_mel.jpg"] and (cache.hits, cache.misses) == (10, 1)


def test_files_changed_just_before_hashing_are_hashed_every_time(tmp_path, monkeypatch):
    from dermabench import image_cache

    root = broken_and_odd_folder(tmp_path / "data")
    normalised(root, 16, ImageCache(tmp_path / "cache", 16))  # settle_seconds 2: all 11 files are too new
    hashed = []
    real_digest = image_cache.file_digest
    monkeypatch.setattr(image_cache, "file_digest", lambda path: hashed.append(path) or real_digest(path))
    cache = ImageCache(tmp_path / "cache", 16)
    normalised(root, 16, cache)
    assert len(hashed) == 11 and (cache.hits, cache.misses) == (11, 0)


def test_a_damaged_digest_record_only_costs_hashing(tmp_path, monkeypatch):
    root = broken_and_odd_folder(tmp_path / "data")
    monkeypatch.setattr(ImageCache, "settle_seconds", 0.0)
    normalised(root, 16, ImageCache(tmp_path / "cache", 16))
    (tmp_path / "cache" / "file-digests.json").write_text("{not json")
    cache = ImageCache(tmp_path / "cache", 16)
    normalised(root, 16, cache)
    assert (cache.hits, cache.misses) == (11, 0)
    assert len(json.loads((tmp_path / "cache" / "file-digests.json").read_text())) == 11


def test_a_pack_without_its_index_is_ignored(tmp_path):
    root = broken_and_odd_folder(tmp_path / "data")
    normalised(root, 16, ImageCache(tmp_path / "cache", 16))
    for index in (tmp_path / "cache" / "16px").glob("pack-*.json"):
        index.unlink()  # as if the run died between writing the array and its index
    cache = ImageCache(tmp_path / "cache", 16)
    normalised(root, 16, cache)
    assert (cache.hits, cache.misses) == (0, 11)


def test_read_table_pads_short_rows_skips_blank_lines_and_drops_extra_cells(tmp_path):
    path = tmp_path / "meta.csv"
    path.write_text("\ufeffImage_ID , dx,Age\n a1 ,mel, 40\n\n , ,\nb2,nv\nc3,bkl,50,surplus\n", encoding="utf-8")
    table = tabular_images.read_table("dataset 'x'", path)
    assert table.columns == ["image_id", "dx", "age"]
    assert table.rows == [
        (2, {"image_id": "a1", "dx": "mel", "age": "40"}),
        (5, {"image_id": "b2", "dx": "nv", "age": ""}),
        (6, {"image_id": "c3", "dx": "bkl", "age": "50"}),
    ]
    named = tabular_images.read_table("dataset 'x'", path, columns=["a", "b"])
    assert named.rows[0] == (1, {"a": "Image_ID", "b": "dx"})
