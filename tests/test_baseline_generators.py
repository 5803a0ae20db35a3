"""The baseline generators: `augment` (classical augmentation) and `folder` (pre-generated images)."""

import csv
import os

import numpy as np
import pytest
from PIL import Image

import dermabench
from dermabench.errors import DermabenchError, PluginError
from dermabench_plugins import augment, folder
from dermabench_plugins.augment import AugmentGenerator
from dermabench_plugins.folder import FolderGenerator

CTX = dermabench.RunContext(seed=0, image_size=32)


def solid(rgb, size=(32, 32), stripe=True):
    """A flat colour with a marker stripe (so flips and rotations are visible); rgb encodes the source."""
    array = np.empty((size[1], size[0], 3), dtype=np.uint8)
    array[:] = rgb
    if stripe:
        array[:4, : size[0] // 2] = 255 - np.array(rgb, dtype=np.uint8)
    return Image.fromarray(array)


def prompts(labels, seed0=100):
    return [dermabench.Prompt(f"a {dermabench.LABEL_NAMES[y]} lesion", y, seed0 + i) for i, y in enumerate(labels)]


# --------------------------------------------------------------------------- augment


@pytest.fixture
def pool():
    """Benign sources are reddish (R=200), malignant ones bluish (B=200): the class shows in the colour."""
    benign = [dermabench.Sample(solid((200, 40 + 10 * i, 40)), 0) for i in range(5)]
    malignant = [dermabench.Sample(solid((40, 40 + 10 * i, 200), size=(40, 32)), 1) for i in range(3)]
    return benign + malignant


def fitted(pool, **options):
    gen = AugmentGenerator(**options)
    gen.fit(pool, CTX)
    return gen


def test_augment_registered():
    found = []
    augment.register_generators(register=found.append)
    assert found == [AugmentGenerator] and AugmentGenerator.name == "augment" and AugmentGenerator.description


def test_augment_one_rgb_image_per_prompt_from_the_right_class(pool):
    labels = [0, 1, 1, 0, 1, 0, 0, 1] * 3
    out = fitted(pool).generate(prompts(labels), CTX)
    assert len(out) == len(labels)
    for image, label in zip(out, labels):
        assert image.mode == "RGB"
        assert image.size == ((32, 32) if label == 0 else (40, 32))  # the source's size
        r, _, b = np.asarray(image, dtype=float).reshape(-1, 3).mean(0)
        assert (r > b) == (label == 0)


def test_augment_is_deterministic_per_prompt_and_independent_of_the_batch(pool):
    gen = fitted(pool)
    batch = prompts([0, 1, 0, 1, 1, 0])
    alone = [gen.generate([p], CTX)[0] for p in batch]
    together = gen.generate(batch, CTX)
    reordered = gen.generate(batch[::-1], CTX)[::-1]
    again = fitted(pool).generate(batch, CTX)
    for images in (together, reordered, again):
        for a, b in zip(alone, images):
            assert np.array_equal(np.asarray(a), np.asarray(b))
    # another seed, another image; and the run seed plays no part
    other = gen.generate([dermabench.Prompt("x", 0, 999)], CTX)[0]
    assert not np.array_equal(np.asarray(other), np.asarray(alone[0]))
    run1 = gen.generate(batch[:1], dermabench.RunContext(seed=1, image_size=32))[0]
    assert np.array_equal(np.asarray(run1), np.asarray(alone[0]))


def test_augment_transforms_the_source(pool):
    sources = {np.asarray(s.image).tobytes() for s in pool}
    out = fitted(pool).generate(prompts([0, 1] * 20), CTX)
    changed = [np.asarray(image).tobytes() not in sources for image in out]
    assert sum(changed) >= 38
    # flips/rotations move the marker stripe around: not always in the top-left corner
    corners = {tuple(np.asarray(image)[1, 1] > 128) for image in out}
    assert len(corners) > 1


def test_augment_errors(pool):
    with pytest.raises(PluginError, match="before fit"):
        AugmentGenerator().generate(prompts([0]), CTX)
    only_benign = fitted([s for s in pool if s.label == 0])
    assert len(only_benign.generate(prompts([0, 0]), CTX)) == 2
    with pytest.raises(PluginError, match="no malignant images"):
        only_benign.generate(prompts([0, 1]), CTX)
    with pytest.raises(DermabenchError, match="augment.*'min_scale'"):
        AugmentGenerator(min_scale="0")
    with pytest.raises(DermabenchError, match="augment.*unknown option 'scale'"):
        AugmentGenerator(scale=0.5)
    assert AugmentGenerator(min_scale="0.9", jitter="0").config == {"min_scale": 0.9, "jitter": 0.0}


# --------------------------------------------------------------------------- folder


def write_images(root, names, rgb):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        solid(rgb, stripe=False).save(path)


@pytest.fixture
def subfolders(tmp_path):
    root = tmp_path / "synth"
    write_images(root, ["benign/b2.png", "benign/b10.png", "benign/a1.jpg", "benign/sub/c.png"], (200, 0, 0))
    write_images(root, ["malignant/m1.png", "malignant/m2.png"], (0, 0, 200))
    (root / "benign" / "notes.txt").write_text("not an image")
    (root / "benign" / ".DS_Store").write_bytes(b"\0\1")
    return root


def names(gen, label):
    return [p.relative_to(gen.root).as_posix() for p in gen.images[label]]


def test_folder_registered():
    found = []
    folder.register_generators(register=found.append)
    assert found == [FolderGenerator] and FolderGenerator.name == "folder" and FolderGenerator.description


def test_folder_subfolders_in_sorted_order(subfolders):
    gen = FolderGenerator(path=str(subfolders))
    assert gen.layout == "subfolders"
    assert names(gen, 0) == ["benign/a1.jpg", "benign/b10.png", "benign/b2.png", "benign/sub/c.png"]
    assert names(gen, 1) == ["malignant/m1.png", "malignant/m2.png"]
    gen.fit([], CTX)
    out = gen.generate(prompts([1, 0, 0]), CTX)
    assert [im.getpixel((0, 0)) for im in out] == [(0, 0, 200), (200, 0, 0), (200, 0, 0)]
    assert all(im.mode == "RGB" for im in out)
    # the next call continues with the next unused images, then runs out
    assert len(gen.generate(prompts([0, 1]), CTX)) == 2
    with pytest.raises(DermabenchError) as info:
        gen.generate(prompts([0, 0]), CTX)
    message = str(info.value)
    for word in (str(subfolders), "4 benign", "3 already used", "2 were asked for", "--n-synthetic"):
        assert word in message
    gen.fit([], CTX)  # a new fit starts again from the first image
    assert len(gen.generate(prompts([0] * 4 + [1] * 2), CTX)) == 6


def test_folder_not_enough_images_of_a_class(subfolders):
    gen = FolderGenerator(path=str(subfolders))
    with pytest.raises(DermabenchError, match=r"has 2 malignant images but 5 were asked for; lower --n-synthetic"):
        gen.generate(prompts([1] * 5 + [0]), CTX)


def test_a_folder_too_small_for_the_run_fails_before_captions(subfolders, tmp_path, monkeypatch):
    """4 benign + 2 malignant images cannot serve 120 balanced prompts: the run says so right after the split."""
    from dermabench.config import build_config
    from dermabench.protocol import run
    from dermabench_plugins.abcd_captioner import ABCDCaptioner

    def never(*args, **kwargs):
        raise AssertionError("captions were made before the image count was checked")

    monkeypatch.setattr(ABCDCaptioner, "caption", never)
    config = build_config(profile="smoke", out=str(tmp_path / "out"), generator="folder",
                          generator_options={"path": str(subfolders)}, arms="real")  # fmt: skip
    with pytest.raises(DermabenchError) as info:
        run(config)
    assert str(info.value) == (
        "generator 'folder' has 4 benign images but the run prompts for 60 (--n-synthetic 120, "
        "prompt_balance = balanced); lower --n-synthetic or add images"
    )
    assert FolderGenerator(path=str(subfolders)).available_images() == {0: 4, 1: 2}


def test_folder_csv_layout(tmp_path):
    root = tmp_path / "flux"
    write_images(root, ["img/x1.png", "img/x2.png", "img/x3.png"], (10, 20, 30))
    write_images(root, ["img/y.png"], (90, 90, 90))
    (root / "labels.csv").write_text("Filename,Label\nimg/x3.png,malignant\nimg/x1.png,1\nimg/x2.png,benign\n\n")
    gen = FolderGenerator(path=str(root))
    assert gen.layout.startswith("csv:")
    assert names(gen, 0) == ["img/x2.png"] and names(gen, 1) == ["img/x1.png", "img/x3.png"]
    assert len(gen.generate(prompts([1, 1, 0]), CTX)) == 3
    # a CSV named with csv=, relative to the folder; column 'image', labels 0/1
    with open(root / "other.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["image", "label"], ["img/y.png", "0"], ["img/x1.png", "0"]])
    gen = FolderGenerator(path=str(root), csv="other.csv")
    assert names(gen, 0) == ["img/x1.png", "img/y.png"] and names(gen, 1) == []


@pytest.mark.parametrize("bad", ["../outside.png", "img/../../outside.png", "ABSOLUTE"])
def test_folder_csv_paths_cannot_escape(tmp_path, bad):
    root = tmp_path / "set"
    write_images(root, ["img/a.png"], (1, 2, 3))
    write_images(tmp_path, ["outside.png"], (1, 2, 3))
    if bad == "ABSOLUTE":
        bad = str(tmp_path / "outside.png")
    (root / "labels.csv").write_text(f"path,label\nimg/a.png,0\n{bad},1\n")
    with pytest.raises(DermabenchError, match=r"labels.csv, line 3: path .* points outside"):
        FolderGenerator(path=str(root))


def test_folder_symlink_out_of_the_folder_is_rejected(subfolders, tmp_path):
    write_images(tmp_path, ["secret.png"], (1, 2, 3))
    os.symlink(tmp_path / "secret.png", subfolders / "malignant" / "link.png")
    with pytest.raises(DermabenchError, match="points outside"):
        FolderGenerator(path=str(subfolders))


def test_folder_csv_errors(tmp_path):
    root = tmp_path / "set"
    write_images(root, ["a.png"], (1, 2, 3))
    (root / "labels.csv").write_text("file,class\na.png,0\n")
    with pytest.raises(DermabenchError, match="needs a column 'path'"):
        FolderGenerator(path=str(root))
    (root / "labels.csv").write_text("path,label\na.png,melanoma\n")
    with pytest.raises(DermabenchError, match="line 2: label must be 0, 1, benign or malignant"):
        FolderGenerator(path=str(root))
    (root / "labels.csv").write_text("path,label\nmissing.png,0\n")
    with pytest.raises(DermabenchError, match="image not found: missing.png"):
        FolderGenerator(path=str(root))
    with pytest.raises(DermabenchError, match="csv=nope.csv"):
        FolderGenerator(path=str(root), csv="nope.csv")


def test_folder_undecodable_file_is_named(subfolders):
    (subfolders / "malignant" / "m0.png").write_bytes(b"this is not a png")
    gen = FolderGenerator(path=str(subfolders))
    assert gen.generate(prompts([0]), CTX)[0].size == (32, 32)
    with pytest.raises(DermabenchError, match=r"cannot decode malignant/m0\.png"):
        gen.generate(prompts([1]), CTX)


def test_folder_missing_or_bad_path(tmp_path):
    with pytest.raises(DermabenchError, match=r"--generator-opt path=DIR"):
        FolderGenerator()
    with pytest.raises(DermabenchError, match=r"path=.*does not exist"):
        FolderGenerator(path=str(tmp_path / "nope"))
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(DermabenchError, match=r"path=.*is not a directory"):
        FolderGenerator(path=str(tmp_path / "file.png"))
    with pytest.raises(DermabenchError, match=r"neither benign/ and malignant/ subfolders nor a labels.csv"):
        FolderGenerator(path=str(tmp_path))
    with pytest.raises(DermabenchError, match=r"folder.*unknown option 'paht'"):
        FolderGenerator(path=str(tmp_path), paht="x")


def test_folder_cache_key_follows_the_contents(subfolders):
    key = FolderGenerator(path=str(subfolders)).cache_key()
    assert key["n_benign"] == 4 and key["n_malignant"] == 2
    assert FolderGenerator(path=str(subfolders)).cache_key() == key
    write_images(subfolders, ["malignant/m3.png"], (0, 0, 200))
    added = FolderGenerator(path=str(subfolders)).cache_key()
    assert added["listing_sha256"] != key["listing_sha256"] and added["n_malignant"] == 3
    target = subfolders / "benign" / "a1.jpg"
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert FolderGenerator(path=str(subfolders)).cache_key()["listing_sha256"] != added["listing_sha256"]
