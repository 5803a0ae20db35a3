"""`dermabench fid DIR_A DIR_B`: the same numbers as the metric functions, one JSON object, one-line errors."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from in_test_plugins import registered_plugin

import dermabench
from dermabench.cli import app
from dermabench.fid_command import JSON_KEYS
from dermabench.images import to_square_rgb
from dermabench.metrics.fidelity import fidelity_metrics

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, ["fid", *map(str, args)])


class GridColours(dermabench.FeatureExtractor):
    """Mean colour of each cell of a 4 × 4 grid (48-d); `scale` option to check options arrive."""

    name = "grid-colours-test"

    def __init__(self, scale="1", **options):
        super().__init__(scale=scale, **options)
        self.scale = float(scale)

    def extract(self, images, context):
        arr = np.stack([np.asarray(im, dtype=np.float64) for im in images]) / 255.0
        n, h, w, _ = arr.shape
        return self.scale * arr.reshape(n, 4, h // 4, 4, w // 4, 3).mean(axis=(2, 4)).reshape(n, -1)


@pytest.fixture(autouse=True)
def grid_extractor():
    class Plugin:
        @dermabench.hookimpl
        def register_extractors(self, register):
            register(GridColours)

    with registered_plugin(Plugin(), "grid-colours-test"):
        yield


def _write(folder, n, seed, shift=0.0):
    """n images in mixed formats, modes and shapes, some in a subfolder, plus a file that is not an image."""
    rng = np.random.default_rng(seed)
    formats = ["png:RGB", "jpg:RGB", "webp:RGB", "bmp:RGB", "tif:RGB", "png:L", "png:RGBA", "JPEG:RGB"]
    (folder / "sub" / "deeper").mkdir(parents=True)
    for i in range(n):
        ext, mode = formats[i % len(formats)].split(":")
        w, h = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        base = rng.uniform(60, 200, 3) + shift
        array = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(array).convert(mode)
        where = folder if i % 3 == 0 else folder / "sub" if i % 3 == 1 else folder / "sub" / "deeper"
        image.save(where / f"img{i:02d}.{ext}")
    (folder / "notes.txt").write_text("not an image")


@pytest.fixture
def folders(tmp_path):
    a, b = tmp_path / "real", tmp_path / "generated"
    _write(a, 20, 0)
    _write(b, 16, 1, shift=30.0)
    return a, b


def _features(folder, size, scale=1.0):
    """The features computed independently: sorted files, the harness's normalisation, the extractor."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() != ".txt" and p.is_file())
    images = [to_square_rgb(Image.open(p), size)[0] for p in files]
    return GridColours(scale=scale).extract(images, None)


def test_json_is_one_object_with_the_metric_functions_numbers(folders):
    a, b = folders
    result = invoke(
        a, b, "--extractor", "grid-colours-test", "--extractor-opt", "scale=2", "--image-size", 32, "--json"
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    numbers = json.loads(lines[0])
    assert tuple(numbers) == JSON_KEYS
    expected = fidelity_metrics(_features(a, 32, 2.0), _features(b, 32, 2.0), seed=0)
    for key in ("fid", "kid_mean", "kid_std", "kid_subset_size", "precision", "recall"):
        assert numbers[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-15), key
    assert numbers["fid"] > 0 and numbers["kid_subset_size"] == 16
    assert (numbers["n_a"], numbers["n_b"]) == (20, 16)
    assert numbers["extractor"] == "grid-colours-test" and numbers["image_size"] == 32


def test_text_report_and_defaults(folders):
    a, b = folders
    result = invoke(a, b, "--extractor", "grid-colours-test", "-q")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["FID", "KID", "precision", "recall", "extractor", "N"]
    assert "images at 64 px" in result.stdout and "A 20, B 16" in result.stdout
    expected = fidelity_metrics(_features(a, 64), _features(b, 64), seed=0)
    assert lines[0] == f"FID        {expected['fid']:.4f}"


def test_default_extractor_is_the_offline_efficientnet(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a, 5, 2)
    _write(b, 4, 3)
    result = invoke(a, b, "--extractor-opt", "input_size=32", "--json", "-q")
    assert result.exit_code == 0, result.output
    numbers = json.loads(result.stdout)
    assert numbers["extractor"] == "efficientnet-lite0" and numbers["image_size"] == 64
    assert (numbers["n_a"], numbers["n_b"]) == (5, 4) and numbers["kid_subset_size"] == 4
    assert numbers["kid_subsets"] == 100  # what kid_std is the spread over
    assert all(isinstance(numbers[key], float) for key in ("fid", "kid_mean", "kid_std", "precision", "recall"))


def _error_line(result):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()  # progress lines may come first
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], lines
    return lines[-1]


def test_bad_folders_are_one_line_errors_naming_the_path(folders, tmp_path):
    a, _ = folders
    missing = tmp_path / "no" / "such"
    assert _error_line(invoke(missing, a)) == f"error: DIR_A: folder not found: {missing}"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no images here")
    line = _error_line(invoke(a, tmp_path / "empty", "--extractor", "grid-colours-test"))
    assert line.startswith(f"error: DIR_B: no images (png, jpg, jpeg, webp, bmp, tif, tiff) under {tmp_path / 'empty'}")
    file = next(a.glob("*.png"))
    assert _error_line(invoke(file, a)) == f"error: DIR_A: not a folder: {file}"
    (tmp_path / "one").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "one" / "x.png")
    assert "need at least 2 images, found 1" in _error_line(invoke(a, tmp_path / "one"))


def test_unreadable_image_is_named(folders):
    a, b = folders
    broken = b / "sub" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    line = _error_line(invoke(a, b, "--extractor", "grid-colours-test"))
    assert line.startswith(f"error: cannot read image {broken}: ")


def test_bad_extractor_name_option_or_size(folders):
    a, b = folders
    assert "Did you mean 'grid-colours-test'?" in _error_line(invoke(a, b, "--extractor", "grid-colours-tst"))
    assert (
        _error_line(invoke(a, b, "--extractor-opt", "scale")) == "error: --extractor-opt expects key=value, got 'scale'"
    )
    assert _error_line(invoke(a, b, "--image-size", 8)) == "error: --image-size must be at least 16, got 8"
    line = _error_line(invoke(a, b, "--extractor", "efficientnet-lite0", "--extractor-opt", "colour=1"))
    assert "unknown option 'colour'" in line
