"""The bad-input matrix (issue 9, items 3 and 4): every kind of bad input, refused clearly, one row each.

Every row asserts a one-line message (no newline, no terminal escape codes) that names the culprit:
the file, CSV line, option, plugin, step or setting. The tables, by what must happen:

1. BROKEN_FILES: an image file that cannot be used is rejected by name; the other images still load.
2. ODD_MODES: an image in another mode is converted to RGB, never refused.
3. UNKNOWN_LABELS: a label that is not benign/malignant is counted as such, never guessed.
4. REFUSED: the layer that reads the input (dataset plugin, option parser, run config, plugin manager,
   contract check, training loop, weights loader) raises DermabenchError/PluginError naming the culprit.
5. NOT_A_CRASH: AUC undefined on one-class validation or test data is None (N/A), never a crash.
6. CLI: refusals through `dermabench run`: exit code 2, the message as the only line on stderr, no
   traceback, every file of an earlier finished run byte-identical afterwards, no generated images cached.

Rows marked xfail(strict=True) still need a fix in a file owned elsewhere; the reason says where and what.
Everything is cheap: no protocol run gets past generation.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from in_test_plugins import registered_plugin

import dermabench
from dermabench import plugins
from dermabench.arms import check_probabilities
from dermabench.cli import app
from dermabench.config import build_config
from dermabench.errors import DermabenchError
from dermabench.generation import check_images, generate_and_store, plugin_call
from dermabench.image_cache import ImageCache
from dermabench.images import normalise_samples
from dermabench_plugins.cnn import CNNClassifier
from dermabench_plugins.folder import FolderGenerator
from dermabench_plugins.ham10000 import HAM10000Dataset
from dermabench_plugins.image_classifier import TorchImageClassifier
from dermabench_plugins.imagefolder import ImageFolderDataset

SIZE = 16
HAM_HEADER = "lesion_id,image_id,dx,dx_type,age,sex,localization"


def one_line(message: str) -> str:
    """The message, after checking it is one plain line: what `error: ...` on a terminal must be."""
    assert "\n" not in message and "\r" not in message, f"not one line: {message!r}"
    assert "\x1b" not in message, f"terminal escape codes: {message!r}"
    return message


# --------------------------------------------------------------------------- tiny inputs


def picture(path: Path, index: int = 0, size=(20, 20), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (40 + 13 * index % 200, 120, 80)).convert(mode).save(path)
    return path


def image_folder(root: Path, benign: int = 3, malignant: int = 3) -> Path:
    """`imagefolder` layout: benign/b<i>.png and malignant/m<i>.png, each image its own lesion."""
    for i in range(benign):
        picture(root / "benign" / f"b{i}.png", i)
    for i in range(malignant):
        picture(root / "malignant" / f"m{i}.png", 100 + i)
    (root / "benign").mkdir(parents=True, exist_ok=True)
    (root / "malignant").mkdir(parents=True, exist_ok=True)
    return root


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def ham_folder(root: Path, dxs: dict[str, str]) -> Path:
    for i, (image_id, dx) in enumerate(dxs.items()):
        picture(root / "images" / f"{image_id}.jpg", i)
    write_csv(root / "HAM10000_metadata.csv", HAM_HEADER,
              [f"L{i},{image_id},{dx},histo,50,male,back" for i, (image_id, dx) in enumerate(dxs.items())])  # fmt: skip
    return root


def noise_bytes(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


def corrupt_png() -> bytes:
    data = bytearray(noise_bytes("PNG"))
    for i in range(len(data) // 2, len(data) // 2 + 40):
        data[i] ^= 0xFF
    return bytes(data)


def toy(n: int, seed: int = 0) -> list[dermabench.Sample]:
    rng = np.random.default_rng(seed)
    return [
        dermabench.Sample(Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)), i % 2)
        for i in range(n)
    ]


def ctx(tmp_path: Path | None = None) -> dermabench.RunContext:
    return dermabench.RunContext(seed=0, image_size=SIZE, **({"work_dir": tmp_path} if tmp_path else {}))


def prompts(n: int) -> list[dermabench.Prompt]:
    return [dermabench.Prompt("a lesion", i % 2, i) for i in range(n)]


# --------------------------------------------------------------------------- in-test plugins


class BadGenerator(dermabench.Generator):
    """A generator that breaks its contract in the way `mode` says."""

    name = "bad-input-generator"
    mode = "raise"

    def generate(self, prompts, context):
        if self.mode == "raise":
            raise RuntimeError("GPU on fire")
        if self.mode == "count":
            return [Image.new("RGB", (8, 8))] * (len(prompts) - 1)
        if self.mode == "gray":
            return [Image.new("L", (8, 8))] * len(prompts)
        return [Image.new("RGB", (8, 8)), np.zeros((8, 8, 3), np.uint8)] + [Image.new("RGB", (8, 8))] * (
            len(prompts) - 2
        )


def bad_generator(mode: str) -> BadGenerator:
    generator = BadGenerator()
    generator.mode = mode
    return generator


class RaisingDataset(dermabench.Dataset):
    name = "bad-input-raising"

    def samples(self):
        yield toy(1)[0]
        raise OSError("disk gone")


class EmptyDataset(dermabench.Dataset):
    name = "bad-input-empty"

    def samples(self):
        return iter(())


class InTestPlugins:
    @dermabench.hookimpl
    def register_generators(self, register):
        register(BadGenerator)

    @dermabench.hookimpl
    def register_datasets(self, register):
        register(RaisingDataset)
        register(EmptyDataset)


@pytest.fixture(scope="module", autouse=True)
def in_test_plugins():
    with registered_plugin(InTestPlugins(), "bad-input-test"):
        yield


@pytest.fixture
def fresh_manager(monkeypatch):
    """An empty plugin manager that loads entry points again (under the test's DERMABENCH_LOAD_PLUGINS)."""
    import pluggy

    pm = pluggy.PluginManager(plugins.GROUP)
    pm.add_hookspecs(dermabench.hookspecs)
    monkeypatch.setattr(plugins, "pm", pm)
    monkeypatch.setattr(plugins, "_loaded", False)
    monkeypatch.setattr(plugins, "_versions", {})
    return pm


# --------------------------------------------------------------------------- 1. broken image files


def _zero(path: Path) -> None:
    path.write_bytes(b"")


#: (row, file name under malignant/, how to write it, MAX_IMAGE_PIXELS for the row or None, reason it gets)
BROKEN_FILES = [
    ("corrupt", "bad.png", lambda p: p.write_bytes(corrupt_png()), None,
     r"OSError: unrecognized data stream contents when reading image file"),
    ("truncated", "bad.jpg", lambda p: p.write_bytes(noise_bytes("JPEG")[:700]), None,
     r"OSError: image file is truncated.*"),
    ("zero-byte", "bad.jpg", _zero, None, r"empty file \(0 bytes\)"),
    ("non-image", "bad.jpg", lambda p: p.write_text("this is not an image\n"), None,
     r"not an image PIL can identify"),
    # PIL raises above 2 × MAX_IMAGE_PIXELS and only warns above it; both are rejections here
    ("huge-image-over-twice-the-limit", "bad.png", lambda p: picture(p, size=(100, 100)), 1000,
     r"decompression bomb guard \(PIL.Image.MAX_IMAGE_PIXELS=1000\): .*"),
    ("huge-image-over-the-limit", "bad.png", lambda p: picture(p, size=(40, 40)), 1000,
     r"decompression bomb guard \(PIL.Image.MAX_IMAGE_PIXELS=1000\): .*"),
]  # fmt: skip


@pytest.mark.parametrize("name, write, max_pixels, reason", [row[1:] for row in BROKEN_FILES],
                         ids=[row[0] for row in BROKEN_FILES])  # fmt: skip
def test_a_broken_image_file_is_rejected_by_name_and_the_rest_loads(tmp_path, monkeypatch, name, write, max_pixels,
                                                                     reason):  # fmt: skip
    root = image_folder(tmp_path / "data")
    write(root / "malignant" / name)
    if max_pixels is not None:
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", max_pixels)
    cache = ImageCache(tmp_path / "cache", SIZE)
    for attempt in ("decoded", "from the image cache"):
        dataset = ImageFolderDataset(data_dir=str(root))
        dataset.use_image_cache(cache)
        kept, host = normalise_samples(dataset.samples(), SIZE, "imagefolder")
        assert len(kept) == 6, attempt
        [(culprit, why)] = dataset.report["undecodable"]
        assert culprit == f"malignant/{name}", attempt
        assert re.fullmatch(reason, one_line(why)), (attempt, why)
        assert host.rejected == []  # the plugin rejected it; nothing broken reached the host
    # the cache remembers the rejection by content: a repaired file is read again, not refused from memory
    (root / "malignant" / name).unlink()
    picture(root / "malignant" / name, 7)
    dataset = ImageFolderDataset(data_dir=str(root))
    dataset.use_image_cache(cache)
    assert len(list(dataset.samples())) == 7 and dataset.report["undecodable"] == []


# --------------------------------------------------------------------------- 2. odd image modes


def gray16(path: Path) -> None:
    Image.fromarray(np.arange(400, dtype=np.uint16).reshape(20, 20) * 150).save(path)


def float_tiff(path: Path) -> None:
    Image.fromarray(np.linspace(0, 1, 400, dtype=np.float32).reshape(20, 20)).save(path)


#: (mode, file name, how to write it): each must load as that mode and come out RGB, not refused
ODD_MODES = [
    ("1", "bilevel.png", lambda p: picture(p, mode="1")),
    ("L", "gray.png", lambda p: picture(p, mode="L")),
    ("LA", "gray_alpha.png", lambda p: picture(p, mode="LA")),
    ("P", "palette.png", lambda p: picture(p, mode="P")),
    ("RGBA", "rgba.png", lambda p: picture(p, mode="RGBA")),
    ("CMYK", "cmyk.jpg", lambda p: picture(p, mode="CMYK")),
    ("I;16", "gray16.png", gray16),
    ("F", "float.tif", float_tiff),
]


@pytest.mark.parametrize("mode, name, write", ODD_MODES, ids=[row[0] for row in ODD_MODES])
def test_an_image_in_another_mode_is_converted_not_refused(tmp_path, mode, name, write):
    root = image_folder(tmp_path / "data")
    write(root / "benign" / name)
    dataset = ImageFolderDataset(data_dir=str(root))
    kept, host = normalise_samples(dataset.samples(), SIZE, "imagefolder")
    assert dataset.report["undecodable"] == [] and host.rejected == []
    assert len(kept) == 7
    assert dict(host.converted) == {mode: 1} or (mode == "I;16" and dict(host.converted) == {"I": 1})  # PIL < 10
    [odd] = [s for s in kept if s.meta["image_id"] == f"benign/{name}"]
    assert odd.image.mode == "RGB" and odd.image.size == (SIZE, SIZE)
    pixels = np.asarray(odd.image)
    assert pixels.dtype == np.uint8 and pixels.max() > 0  # converted, not blacked out


# --------------------------------------------------------------------------- 3. unknown labels


def unknown_ham_dx(tmp_path: Path) -> tuple[int, dict]:
    ham_folder(tmp_path, {"a": "mel", "b": "nv", "c": "xyz"})
    dataset = HAM10000Dataset(data_dir=str(tmp_path))
    return len(list(dataset.samples())), dataset.report["unknown_dx"]


def unknown_manifest_label(tmp_path: Path) -> tuple[int, dict]:
    for i in range(3):
        picture(tmp_path / "pics" / f"{i}.png", i)
    write_csv(tmp_path / "labels.csv", "path,label", ["pics/0.png,benign", "pics/1.png,1", "pics/2.png,maybe"])
    dataset = ImageFolderDataset(data_dir=str(tmp_path))
    return len(list(dataset.samples())), dataset.report["unknown_dx"]


def unknown_sample_label(tmp_path: Path) -> tuple[int, dict]:
    """A third-party dataset yielding label 2: the host rejects that sample by id."""
    samples = toy(3)
    samples[2] = dermabench.Sample(samples[2].image, 2, meta={"image_id": "odd-one"})
    kept, report = normalise_samples(samples, SIZE, "third-party")
    return len(kept), dict(report.rejected)


#: (row, loader, images kept, how the culprit is counted)
UNKNOWN_LABELS = [
    ("ham10000-dx", unknown_ham_dx, 2, {"xyz": 1}),
    ("imagefolder-manifest-label", unknown_manifest_label, 2, {"(label 'maybe')": 1}),
    ("host-label-not-0-or-1", unknown_sample_label, 2, {"odd-one": "label 2 is not 0 (benign) or 1 (malignant)"}),
]


@pytest.mark.parametrize("load, n_kept, counted", [row[1:] for row in UNKNOWN_LABELS],
                         ids=[row[0] for row in UNKNOWN_LABELS])  # fmt: skip
def test_an_unknown_label_is_counted_never_guessed(tmp_path, load, n_kept, counted):
    kept, report = load(tmp_path)
    assert kept == n_kept
    assert report == counted
    assert all(one_line(str(value)) for value in report.values())


# --------------------------------------------------------------------------- 4. refused by the layer that reads it


def csv_missing_columns_ham(tmp_path):
    ham_folder(tmp_path, {"a": "mel", "b": "nv"})
    write_csv(tmp_path / "meta.csv", "image_id,diagnosis", ["a,mel", "b,nv"])
    HAM10000Dataset(data_dir=str(tmp_path), csv="meta.csv")


def csv_missing_columns_manifest(tmp_path):
    picture(tmp_path / "a.png")
    write_csv(tmp_path / "labels.csv", "path,class", ["a.png,0"])
    ImageFolderDataset(data_dir=str(tmp_path), csv="labels.csv")


def csv_missing_columns_folder_generator(tmp_path):
    picture(tmp_path / "a.png")
    write_csv(tmp_path / "labels.csv", "path,class", ["a.png,0"])
    FolderGenerator(path=str(tmp_path))


def unknown_label_folder_generator(tmp_path):
    picture(tmp_path / "a.png")
    write_csv(tmp_path / "labels.csv", "path,label", ["a.png,maybe"])
    FolderGenerator(path=str(tmp_path))


def manifest_escapes(bad: str):
    def action(tmp_path):
        root = tmp_path / "data"
        picture(root / "pics" / "a.png")
        picture(tmp_path / "outside.png")
        (root / "link").symlink_to(tmp_path, target_is_directory=True)
        write_csv(root / "labels.csv", "path,label", ["pics/a.png,1", f"{bad},0"])
        ImageFolderDataset(data_dir=str(root))

    return action


def folder_generator_manifest_escapes(tmp_path):
    root = tmp_path / "synthetic"
    picture(root / "a.png")
    picture(tmp_path / "outside.png")
    write_csv(root / "labels.csv", "path,label", ["a.png,1", "../outside.png,0"])
    FolderGenerator(path=str(root))


def empty_subfolders(tmp_path):
    ImageFolderDataset(data_dir=str(image_folder(tmp_path / "data", 0, 0)))


def no_layout(tmp_path):
    (tmp_path / "data").mkdir()
    ImageFolderDataset(data_dir=str(tmp_path / "data"))


def single_class_dataset(tmp_path):
    ImageFolderDataset(data_dir=str(image_folder(tmp_path / "data", 3, 0)))


def single_class_after_decoding(tmp_path):
    root = image_folder(tmp_path / "data", 3, 1)
    _zero(root / "malignant" / "m0.png")
    list(ImageFolderDataset(data_dir=str(root)).samples())


def single_class_training_set(tmp_path):
    benign = [s for s in toy(16) if s.label == 0]
    CNNClassifier(epochs=1, epoch_size=8, batch_size=8, width=4).fit(benign, toy(4), ctx())


def unknown_plugin_name(tmp_path):
    plugins.get("classifier", "cnnn")


def bad_option_value(tmp_path):
    CNNClassifier(epochs="zero")


def bad_option_name(tmp_path):
    CNNClassifier(epoch=3)


def bad_dataset_option_value(tmp_path):
    ham_folder(tmp_path, {"a": "mel", "b": "nv"})
    HAM10000Dataset(data_dir=str(tmp_path), malignant=" , ")


def bad_run_setting(tmp_path):
    build_config(profile="smoke", seeds=0)


def misspelt_arm(tmp_path):
    build_config(profile="smoke", arms="real,synthetc")


def generator_raises(tmp_path):
    generate_and_store(bad_generator("raise"), prompts(4), ctx(tmp_path), tmp_path / "images.npz")


def generator_wrong_count(tmp_path):
    generate_and_store(bad_generator("count"), prompts(4), ctx(tmp_path), tmp_path / "images.npz")


def generator_not_rgb(tmp_path):
    check_images(bad_generator("gray").generate(prompts(4), ctx()), prompts(4), BadGenerator.name, SIZE)


def generator_not_an_image(tmp_path):
    check_images(bad_generator("array").generate(prompts(4), ctx()), prompts(4), BadGenerator.name, SIZE)


def classifier_wrong_count(tmp_path):
    check_probabilities(np.full(3, 0.5), 4, "mine")


def classifier_not_finite(tmp_path):
    check_probabilities(np.array([0.5, np.nan, 0.2, 0.1]), 4, "mine")


def blows_up_at(call: int, value: float) -> type[TorchImageClassifier]:
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.calls = 0

        def forward(self, x):
            self.calls += self.training
            out = x.mean(dim=(1, 2, 3))[:, None] * self.w
            return out + value if self.calls == call else out

    class BlowsUp(TorchImageClassifier):
        name = "blows-up"

        def build_model(self, image_size):
            return Net()

    return BlowsUp


def nan_loss_classifier(tmp_path):
    blows_up_at(3, float("nan"))(epochs=1, epoch_size=32, batch_size=8).fit(toy(16), toy(8, 1), ctx())


def nan_loss_in_the_second_epoch(tmp_path):
    blows_up_at(6, float("nan"))(epochs=2, epoch_size=32, batch_size=8).fit(toy(16), toy(8, 1), ctx())


def inf_logits_classifier(tmp_path):
    blows_up_at(2, float("inf"))(epochs=1, epoch_size=32, batch_size=8).fit(toy(16), toy(8, 1), ctx())


def tiny_diffusion(nan_at: int | None = None):
    from dermabench_plugins import diffusion_training as dt

    class Tiny(dt.Denoiser):
        def __init__(self):
            torch.manual_seed(0)
            self.module = torch.nn.Linear(4, 4)
            self.calls = 0

        def predict(self, module, x_t, model_time, cond):
            self.calls += 1
            out = module(x_t)
            return out * float("nan") if self.calls == nan_at else out

    data = dt.TrainingSet(torch.randn(8, 4, generator=torch.Generator().manual_seed(0)))
    return dt, Tiny(), data, dt.RectifiedFlow(dt.TimestepSampler("uniform"))


def nan_loss_generator_training(tmp_path):
    dt, denoiser, data, objective = tiny_diffusion(nan_at=3)
    dt.train(denoiser, data, objective, dt.TrainConfig(steps=5, batch_size=2, flip=False, checkpoint_every=0))


def nan_loss_generator_named_by_the_host(tmp_path):
    dt, denoiser, data, objective = tiny_diffusion(nan_at=3)
    with plugin_call("generator", "dermaflux", "fit"):
        dt.train(denoiser, data, objective, dt.TrainConfig(steps=5, batch_size=2, flip=False, checkpoint_every=0))


class NotATensor:
    """Anything a weights-only unpickler must not build."""

    def __init__(self):
        self.value = 1


def pickled_object_classifier_weights(tmp_path):
    from dermabench_plugins.timm_classifiers import load_checkpoint

    torch.save({"model": {"w": torch.zeros(2)}, "extra": NotATensor()}, tmp_path / "full.pth")
    load_checkpoint(tmp_path / "full.pth", "classifier 'vit'")


def pickled_model_classifier_weights(tmp_path):
    from dermabench_plugins.timm_classifiers import load_checkpoint

    torch.save(torch.nn.Linear(2, 2), tmp_path / "model.bin")
    load_checkpoint(tmp_path / "model.bin", "classifier 'vit'")


def not_safetensors_classifier_weights(tmp_path):
    from dermabench_plugins.timm_classifiers import load_checkpoint

    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    load_checkpoint(tmp_path / "junk.safetensors", "classifier 'vit'")


def pickled_extractor_weights(tmp_path):
    from dermabench_plugins.extractor_support import load_state_dict_file

    torch.save({"w": torch.zeros(2), "extra": NotATensor()}, tmp_path / "full.pth")
    load_state_dict_file(tmp_path / "full.pth", "extractor 'inception'")


def pickled_lora(tmp_path):
    from dermabench_plugins.dermaflux import DermaFluxGenerator

    torch.save({"lora_A": torch.zeros(2)}, tmp_path / "lora.pt")
    DermaFluxGenerator(lora=str(tmp_path / "lora.pt"))


def pickled_resume_checkpoint(tmp_path):
    """A generator fine-tuning checkpoint whose tensors file was replaced by a pickle is refused by name."""
    dt, denoiser, data, objective = tiny_diffusion()
    config = dict(steps=4, batch_size=2, flip=False, checkpoint_every=2)
    dt.train(denoiser, data, objective, dt.TrainConfig(**config, stop_after=2), checkpoint_dir=tmp_path / "ckpt")
    _, checkpoint = dt.latest_checkpoint(tmp_path / "ckpt")
    torch.save({"w": torch.zeros(2), "extra": NotATensor()}, checkpoint / "trainable.safetensors")
    dt.train(denoiser, data, objective, dt.TrainConfig(**config), checkpoint_dir=tmp_path / "ckpt")


def only_allowed_plugins_load(tmp_path):
    assert set(plugins.registered("dataset")) == {"phantom"}
    assert set(plugins.registered("classifier")) == {"cnn"}
    plugins.get("generator", "augment")


#: the list of known classifiers, whatever else is installed beside `cnn`
KNOWN_CLASSIFIERS = r"([\w-]+, )*cnn(, [\w-]+)*"
ESCAPE = r"^dataset 'imagefolder': labels\.csv, line 3: path '{}' points outside .*/data; manifest paths must stay"


@dataclass
class Row:
    """One bad input: what is done, and the message (a regex, searched) it must be refused with."""

    id: str
    action: Callable[[Path], Any]
    message: str
    xfail: str | None = None
    #: DERMABENCH_LOAD_PLUGINS for the row; plugins are then loaded afresh under it
    allow_list: str | None = None


REFUSED = [
    # CSV metadata
    Row("csv-missing-columns-ham10000", csv_missing_columns_ham,
        r"^dataset 'ham10000': .*/meta\.csv needs columns image_id and dx; found image_id, diagnosis$"),
    Row("csv-missing-columns-imagefolder-manifest", csv_missing_columns_manifest,
        r"^dataset 'imagefolder': manifest .*/labels\.csv needs a column 'path' \(or 'filename'/'file'\) and a column "
        r"'label'; found path, class$"),
    Row("csv-missing-columns-folder-generator", csv_missing_columns_folder_generator,
        r"^generator 'folder': .*/labels\.csv needs a column 'path' .* and a column 'label'; found path, class$"),
    Row("unknown-label-folder-generator", unknown_label_folder_generator,
        r"^generator 'folder': .*/labels\.csv, line 2: label must be 0, 1, benign or malignant, got 'maybe'$"),
    # item 4: CSV paths cannot escape the folder
    Row("manifest-path-escape-dotdot", manifest_escapes("../outside.png"), ESCAPE.format(r"\.\./outside\.png")),
    Row("manifest-path-escape-dotdot-inside", manifest_escapes("pics/../../outside.png"),
        ESCAPE.format(r"pics/\.\./\.\./outside\.png")),
    Row("manifest-path-escape-absolute", manifest_escapes("/etc/hostname"), ESCAPE.format("/etc/hostname")),
    Row("manifest-path-escape-symlink", manifest_escapes("link/outside.png"), ESCAPE.format(r"link/outside\.png")),
    Row("manifest-path-escape-folder-generator", folder_generator_manifest_escapes,
        r"^generator 'folder': .*/labels\.csv, line 3: path '\.\./outside\.png' points outside .*/synthetic"),
    # empty and single-class data
    Row("empty-dataset", empty_subfolders,
        r"^dataset 'imagefolder' has no benign images in .*/data \(no usable images at all\)$"),
    Row("empty-dataset-no-layout", no_layout,
        r"^dataset 'imagefolder': .*/data has neither benign/ and malignant/ subfolders nor a CSV manifest"),
    Row("single-class-dataset", single_class_dataset,
        r"^dataset 'imagefolder' has no malignant images in .*/data \(usable images by dx: benign 3\)$"),
    Row("single-class-after-decoding", single_class_after_decoding,
        r"^dataset 'imagefolder' has no decodable malignant images in .*/data \(.*1 undecodable images: "
        r"malignant/m0\.png \(empty file \(0 bytes\)\)\)$"),
    Row("single-class-training-set", single_class_training_set,
        r"^classifier 'cnn': the training set has no malignant images \(8 images\)$"),
    # plugin names and options
    Row("unknown-plugin-name", unknown_plugin_name,
        rf"^unknown classifier 'cnnn'\. Known: {KNOWN_CLASSIFIERS}\. Did you mean 'cnn'\?$"),
    Row("bad-option-value", bad_option_value,
        r"^classifier 'cnn': option 'epochs' must be an integer ≥ 1, got 'zero' \(--classifier-opt epochs=\.\.\.\)$"),
    Row("bad-option-name", bad_option_name,
        r"^classifier 'cnn': unknown option 'epoch'\. Known options: .*\. Did you mean 'epochs'\?$"),
    Row("bad-option-value-dataset", bad_dataset_option_value,
        r"^dataset 'ham10000': option 'malignant' must be comma-separated words, got ' , ' "
        r"\(--dataset-opt malignant=\.\.\.\)$"),
    Row("bad-run-setting", bad_run_setting, r"^--seeds must be > 0, got 0$"),
    Row("bad-run-setting-arm", misspelt_arm, r"^unknown arm 'synthetc'\. Known: .*\. Did you mean 'synthetic'\?$"),
    # plugins that raise or break their contract
    Row("plugin-raises", generator_raises,
        r"^generator 'bad-input-generator' failed in generate\(\): RuntimeError: GPU on fire$"),
    Row("plugin-wrong-number-of-images", generator_wrong_count,
        r"^generator 'bad-input-generator' returned 3 images for 4 prompts$"),
    Row("plugin-non-rgb-image", generator_not_rgb,
        r"^generator 'bad-input-generator' returned a L image for prompt 0; RGB is required$"),
    Row("plugin-not-an-image", generator_not_an_image,
        r"^generator 'bad-input-generator' returned ndarray for prompt 1, not a PIL image$"),
    Row("plugin-wrong-number-of-probabilities", classifier_wrong_count,
        r"^classifier 'mine' returned 3 probabilities for 4 test images$"),
    Row("plugin-non-finite-probabilities", classifier_not_finite,
        r"^classifier 'mine' returned probabilities outside \[0, 1\] or not finite$"),
    # non-finite loss while training
    Row("nan-loss-classifier", nan_loss_classifier,
        r"^classifier 'blows-up': the training loss became nan at step 3 of 4 \(epoch 1\); lower the learning rate"),
    Row("nan-loss-classifier-second-epoch", nan_loss_in_the_second_epoch,
        r"^classifier 'blows-up': the training loss became nan at step 6 of 8 \(epoch 2\); lower the learning rate"),
    Row("inf-logits-classifier", inf_logits_classifier,
        r"^classifier 'blows-up': the training loss became (nan|inf) at step 2 of 4 \(epoch 1\)"),
    Row("nan-loss-generator-training", nan_loss_generator_training,
        r"the training loss is not finite at step 3 \(lower lr\)"),
    Row("nan-loss-generator-named", nan_loss_generator_named_by_the_host,
        r"^generator 'dermaflux'.*the training loss is not finite at step 3"),
    # item 4: weights files: safetensors or weights-only pickles, nothing else
    Row("checkpoint-pickled-object", pickled_object_classifier_weights,
        r"^classifier 'vit': refusing to load .*/full\.pth: .*weights_only=True.* \(it would have to build a "
        r"\S*NotATensor object\)\. Save only the state dict"),
    Row("checkpoint-pickled-model", pickled_model_classifier_weights,
        r"^classifier 'vit': refusing to load .*/model\.bin: .*\(it would have to build a "
        r"torch\.nn\.modules\.linear\.Linear object\)"),
    Row("checkpoint-not-safetensors", not_safetensors_classifier_weights,
        r"^classifier 'vit': .*/junk\.safetensors is not a readable safetensors file: "),
    Row("checkpoint-pickled-extractor-weights", pickled_extractor_weights,
        r"^extractor 'inception': cannot load .*/full\.pth as a plain tensor state dict \(loaded with "
        r"weights_only=True.*NotATensor"),
    Row("checkpoint-pickled-lora", pickled_lora,
        r"^generator 'dermaflux': LoRA files are loaded only as \.safetensors \(no pickles\), got lora\.pt$"),
    Row("checkpoint-pickled-resume-state", pickled_resume_checkpoint,
        r"checkpoint-0*2/trainable\.safetensors"),
    # item 4: DERMABENCH_LOAD_PLUGINS
    Row("allow-list-honoured", only_allowed_plugins_load,
        r"^unknown generator 'augment'\. Known: \(none\)\. Only the plugins in DERMABENCH_LOAD_PLUGINS=phantom,cnn "
        r"are loaded\.$", allow_list="phantom,cnn"),
    Row("allow-list-typo", only_allowed_plugins_load,
        r"^unknown generator 'augment'\. Known: \(none\)\. Only the plugins in "
        r"DERMABENCH_LOAD_PLUGINS=phantom,cnn,augmnt are loaded \(no installed plugin is called 'augmnt'\)\.$",
        allow_list="phantom,cnn,augmnt"),
]  # fmt: skip


def _params(rows):
    return [pytest.param(row, id=row.id, marks=[pytest.mark.xfail(strict=True, reason=row.xfail)] if row.xfail else [])
            for row in rows]  # fmt: skip


def use_allow_list(row: Row, monkeypatch, request) -> None:
    """The row's DERMABENCH_LOAD_PLUGINS (unset when it has none), with plugins loaded afresh under it."""
    if row.allow_list is None:
        monkeypatch.delenv(plugins.ALLOW_LIST_ENV, raising=False)
    else:
        request.getfixturevalue("fresh_manager")
        monkeypatch.setenv(plugins.ALLOW_LIST_ENV, row.allow_list)


@pytest.mark.parametrize("row", _params(REFUSED))
def test_bad_input_is_refused_naming_the_culprit(row, tmp_path, monkeypatch, request):
    use_allow_list(row, monkeypatch, request)
    with pytest.raises(DermabenchError) as info:
        row.action(tmp_path)
    assert re.search(row.message, one_line(str(info.value))), str(info.value)


class Tripwire:
    """Unpickling this writes a file: proof that a loader ran pickled code."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path(self.path).write_text, ("unpickled",))


def test_a_cached_images_file_holding_pickles_is_discarded_never_unpickled(tmp_path):
    """Item 4: the generated-images cache is read with allow_pickle=False; a file needing pickle is regenerated."""
    from dermabench.generation import load_cached

    tripwire = tmp_path / "tripwire.txt"
    cached = tmp_path / "augment-0123.npz"
    np.savez(cached, images=np.array([Tripwire(str(tripwire))], dtype=object), labels=np.array([0]))
    assert load_cached(cached) is None
    assert not cached.exists() and not tripwire.exists()


# --------------------------------------------------------------------------- 5. AUC undefined: N/A, never a crash


def single_class_validation_set(tmp_path):
    """Model selection on a one-class validation set: AUC is undefined, training still ends with a model."""
    benign_val = [s for s in toy(8, seed=1) if s.label == 0]
    clf = CNNClassifier(epochs=1, epoch_size=16, batch_size=8, width=4)
    clf.fit(toy(16), benign_val, ctx())
    p = clf.predict_proba([s.image for s in benign_val], ctx())
    assert p.shape == (len(benign_val),) and np.isfinite(p).all()


def single_class_test_set_metrics(tmp_path):
    """Metrics on a one-class test set: AUC (and what needs both classes) is None, the rest is reported."""
    from dermabench.metrics.classification import evaluate_arms

    y = np.zeros(6, dtype=int)
    p = np.linspace(0.1, 0.9, 6)
    arms = evaluate_arms(y, [f"L{i}" for i in range(6)], {"real": [p], "real+synthetic": [p[::-1]]},
                         reference="real", n_boot=20, seed=0)  # fmt: skip
    assert arms["real"]["auc"] is None and arms["real"]["auc_ci95"] is None
    assert arms["real+synthetic"]["delta_vs_real"]["auc"]["value"] is None
    assert arms["real"]["accuracy"] == 0.5 and arms["real"]["specificity"] == 0.5


NOT_A_CRASH = [
    ("single-class-validation-set", single_class_validation_set),
    ("single-class-test-set-metrics", single_class_test_set_metrics),
]


@pytest.mark.parametrize("check", [row[1] for row in NOT_A_CRASH], ids=[row[0] for row in NOT_A_CRASH])
def test_auc_undefined_is_none_never_a_crash(check, tmp_path, recwarn):
    check(tmp_path)
    assert not [w for w in recwarn if "auc" in str(w.message).lower() or "divide" in str(w.message).lower()]


# --------------------------------------------------------------------------- 6. through the command line


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory) -> Path:
    """A results folder holding an earlier finished run (its files only matter byte for byte)."""
    out = tmp_path_factory.mktemp("earlier") / "results"
    run_dir = out / "phantom_augment_cnn_smoke_0123456789"
    run_dir.mkdir(parents=True)
    (run_dir / "result.json").write_text(json.dumps({"schema_version": 1, "run_id": run_dir.name, "arms": {}}))
    (run_dir / "predictions.json").write_text(json.dumps({"image_id": ["a"], "label": [1]}))
    (run_dir / "split.json").write_text("{}")
    (run_dir / "report.html").write_text("<html></html>")
    (out / ".cache" / "splits").mkdir(parents=True)
    (out / ".cache" / "splits" / "phantom-0123456789.json").write_text("{}")
    return out


def cli_ham_missing_columns(tmp_path):
    ham_folder(tmp_path / "ham", {"a": "mel", "b": "nv"})
    write_csv(tmp_path / "ham" / "meta.csv", "image_id,diagnosis", ["a,mel", "b,nv"])
    return ["--dataset", "ham10000", "--data-dir", tmp_path / "ham", "--dataset-opt", "csv=meta.csv"]


def cli_every_malignant_broken(tmp_path):
    root = image_folder(tmp_path / "data", 3, 1)
    _zero(root / "malignant" / "m0.png")
    return ["--dataset", "imagefolder", "--data-dir", root]


def cli_single_class_test_dataset(tmp_path):
    return ["--dataset", "imagefolder", "--data-dir", image_folder(tmp_path / "data", 4, 4),
            "--test-dataset", "imagefolder", "--test-data-dir", image_folder(tmp_path / "test", 4, 0)]  # fmt: skip


def cli_too_few_lesions(tmp_path):
    return ["--dataset", "imagefolder", "--data-dir", image_folder(tmp_path / "data", 4, 2)]


def cli_manifest_escape(tmp_path):
    root = tmp_path / "data"
    picture(root / "pics" / "a.png")
    picture(tmp_path / "outside.png")
    write_csv(root / "labels.csv", "path,label", ["pics/a.png,1", "../outside.png,0"])
    return ["--dataset", "imagefolder", "--data-dir", root]


def cli_generator_raises(tmp_path):
    return ["--dataset", "imagefolder", "--data-dir", image_folder(tmp_path / "data", 8, 8),
            "--generator", "bad-input-generator"]  # fmt: skip


def cli_option_before_work(slot: str, option: str):
    """A bad option for a plugin used late in the run, with a dataset that fails at once when loaded."""

    def setup(tmp_path):
        empty = image_folder(tmp_path / "data", 0, 0)
        return [f"--{slot}-opt", option, "--dataset", "imagefolder", "--data-dir", empty]

    return setup


CLI = [
    Row("unknown-plugin-name", lambda tmp_path: ["--classifier", "cnnn"],
        rf"^error: unknown classifier 'cnnn'\. Known: {KNOWN_CLASSIFIERS}\. Did you mean 'cnn'\?$"),
    Row("bad-option-value", lambda tmp_path: ["--dataset-opt", "n=-5"],
        r"^error: dataset 'phantom': option 'n' must be an integer ≥ 1, got '-5' \(--dataset-opt n=\.\.\.\)$"),
    Row("bad-classifier-option-before-any-work", cli_option_before_work("classifier", "epochs=zero"),
        r"^error: classifier 'cnn': option 'epochs' must be an integer ≥ 1, got 'zero'"),
    Row("bad-generator-option-before-any-work", cli_option_before_work("generator", "strenght=2"),
        r"^error: generator 'dermaflux': unknown option 'strenght'"),
    Row("csv-missing-columns", cli_ham_missing_columns,
        r"^error: dataset 'ham10000': .*/meta\.csv needs columns image_id and dx; found image_id, diagnosis$"),
    Row("manifest-path-escape", cli_manifest_escape,
        r"^error: dataset 'imagefolder': labels\.csv, line 3: path '\.\./outside\.png' points outside .*/data"),
    Row("every-malignant-image-broken", cli_every_malignant_broken,
        r"^error: dataset 'imagefolder' has no decodable malignant images in .*/data \(.*1 undecodable images: "
        r"malignant/m0\.png \(empty file \(0 bytes\)\)\)$"),
    Row("empty-dataset", lambda tmp_path: ["--dataset", "bad-input-empty"],
        r"^error: dataset 'bad-input-empty' yielded no usable images$"),
    Row("single-class-test-dataset", cli_single_class_test_dataset,
        r"^error: dataset 'imagefolder' has no malignant images in .*/test \(usable images by dx: benign 4\)$"),
    Row("too-few-lesions-to-split", cli_too_few_lesions,
        r"^error: only 2 malignant lesion\(s\) in the dataset: too few to split$"),
    Row("dataset-plugin-raises", lambda tmp_path: ["--dataset", "bad-input-raising"],
        r"^error: dataset 'bad-input-raising' failed in samples\(\): OSError: disk gone$"),
    Row("generator-plugin-raises", cli_generator_raises,
        r"^error: generator 'bad-input-generator' failed in generate\(\): RuntimeError: GPU on fire$"),
    Row("allow-list-honoured", lambda tmp_path: ["--generator", "augment"],
        r"^error: unknown generator 'augment'\. Known: \(none\)\. Only the plugins in "
        r"DERMABENCH_LOAD_PLUGINS=phantom,cnn are loaded\.$", allow_list="phantom,cnn"),
]  # fmt: skip


def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize("row", _params(CLI))
def test_bad_input_through_the_cli_exits_2_in_one_line_and_loses_nothing(row, earlier_run, tmp_path, monkeypatch,
                                                                          request):  # fmt: skip
    use_allow_list(row, monkeypatch, request)
    out = tmp_path / "results"
    shutil.copytree(earlier_run, out)
    before = snapshot(out)
    args = ["run", "--profile", "smoke", "--out", out, "--quiet", *row.action(tmp_path)]
    result = CliRunner().invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert re.search(row.message, one_line(lines[0])), lines[0]
    after = snapshot(out)
    assert {name: after.get(name) for name in before} == before  # every earlier file, byte for byte
    assert not [name for name in after if name.startswith(".cache/generated/") and name.endswith(".npz")]


def test_loading_pauses_the_garbage_collector_and_restores_it_even_when_a_dataset_fails():
    import gc

    seen = []

    def samples(fail: bool):
        seen.append(gc.isenabled())
        yield dermabench.Sample(Image.new("RGB", (8, 8)), 0)
        if fail:
            raise OSError("the disk went away")

    assert gc.isenabled()
    kept, _ = normalise_samples(samples(fail=False), 8, "test")
    assert len(kept) == 1 and seen == [False] and gc.isenabled()
    with pytest.raises(OSError, match="disk went away"):
        normalise_samples(samples(fail=True), 8, "test")
    assert seen == [False, False] and gc.isenabled()
    gc.disable()  # a caller that had it off keeps it off
    try:
        normalise_samples(samples(fail=False), 8, "test")
        assert not gc.isenabled()
    finally:
        gc.enable()
