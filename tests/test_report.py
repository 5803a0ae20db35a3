"""HTML reports and plots: the numbers of result.json, images that decode, nothing fetched from a network."""

import base64
import io
import json
import re
import shutil

import numpy as np
import pytest
from fake_results import make_result, write_run
from PIL import Image
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from dermabench import plots
from dermabench.cli import app
from dermabench.report import write_report

DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def decoded_images(text):
    images = []
    for payload in DATA_URI.findall(text):
        image = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
        image.load()
        images.append(image)
    return images


def assert_offline(text):
    assert "http://" not in text and "https://" not in text
    for attribute in re.findall(r'(?:src|href)="([^"]*)"', text):
        assert attribute.startswith(("data:image/png;base64,", "#")) or not re.match(r"^[a-z]+:", attribute), attribute
    assert "<link" not in text and "@import" not in text


@pytest.fixture
def run_dir(tmp_path):
    return write_run(tmp_path, make_result("phantom_augment_cnn_smoke_abc", auc=0.73456, fid=151.25))


def test_run_report_holds_the_result_numbers(run_dir):
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    text = path.read_text()
    result = json.loads((run_dir / "result.json").read_text())
    for arm, values in result["arms"].items():
        assert f"{values['auc']:.3f}" in text, arm
        assert f"[{values['auc_ci95'][0]:.3f}, {values['auc_ci95'][1]:.3f}]" in text
        assert f"{values['accuracy']:.3f}" in text
    delta = result["arms"]["real+synthetic"]["delta_vs_real"]["auc"]
    assert f"{delta['value']:+.3f}" in text
    assert "151.25" in text and "100.50" in text  # FID and its real-vs-real floor
    for section in ("overview", "samples", "fidelity", "classification", "roc", "memorization", "timings"):
        assert f'id="{section}"' in text
    assert 'id="subgroups"' not in text  # no subgroups in this result: no empty section
    assert result["git_commit"] in text and "real-vs-synthetic v1" in text
    assert_offline(text)


def test_embedded_images_decode_and_plots_are_written_next_to_the_json(run_dir):
    text = write_report(run_dir).read_text()
    images = decoded_images(text)
    sizes = [image.size for image in images]
    assert (64, 32) in sizes and (48, 24) in sizes  # samples.png and closest_pairs.png, unchanged
    assert len(images) == 4  # + ROC + delta plots
    for name in ("roc.png", "delta_vs_real.png"):
        on_disk = Image.open(run_dir / name)
        assert on_disk.size in sizes and on_disk.size[0] > 400


def test_result_text_is_escaped(tmp_path):
    result = make_result("run-x", generator="<script>alert(1)</script>")
    result["config"]["generator_options"] = {"path": '"/><img src=x onerror=alert(2)>'}
    text = write_report(write_run(tmp_path, result)).read_text()
    assert "<script>alert(1)" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<img src=x" not in text
    assert text.count("<script>") == 1  # the report's own table-sorting script


def test_missing_pictures_and_predictions_are_noted_not_fatal(tmp_path):
    run_dir = write_run(tmp_path, make_result("run-y"), images=False)
    (run_dir / "predictions.json").unlink()
    text = write_report(run_dir).read_text()
    assert "not available" in text
    assert len(decoded_images(text)) == 1  # only the delta plot, from result.json


def test_subgroups_are_rendered_with_too_small_flags(tmp_path):
    """The shape dermabench.metrics.subgroups.evaluate_subgroups writes."""
    result = make_result("run-s")
    result["subgroups"] = {
        "sex": {"n_unknown": 3, "groups": {
            "female": {"n": 40, "n_malignant": 12, "n_lesions": 30, "too_small": False, "note": None, "arms": {
                "real": {"auc": 0.6543, "auc_ci95": [0.51, 0.77]},
                "real+synthetic": {"auc": 0.7012, "auc_ci95": [0.58, 0.81],
                                   "delta_vs_real": {"auc": {"value": 0.0469, "ci95": [-0.02, 0.11]}}}}},
            "male": {"n": 6, "n_malignant": 0, "n_lesions": 5, "too_small": True,
                     "note": "only benign images: AUC is undefined", "arms": None},
        }},
    }  # fmt: skip
    text = write_report(write_run(tmp_path, result)).read_text()
    section = text.split('id="subgroups"')[1].split("</section>")[0]
    assert "by sex" in section and "3 test images with unknown sex" in section
    assert "0.654" in section and "[0.510, 0.770]" in section and "0.701" in section
    assert "+0.047" in section and "[-0.020, +0.110]" in section
    assert section.count('class="small"') == 1 and "(too small)" in section
    assert "only benign images: AUC is undefined" in section


def test_folder_report_has_a_sortable_leaderboard_and_the_synthetic_ratio_plot(tmp_path):
    for i, n_synthetic in enumerate((60, 120, 240)):
        write_run(tmp_path, make_result(f"run-{n_synthetic}", n_synthetic=n_synthetic, auc=0.6 + 0.05 * i,
                                        created=f"2026-01-0{i + 1}T00:00:00+00:00"))  # fmt: skip
    text = write_report(tmp_path).read_text()
    assert 'class="sortable' in text and "addEventListener" in text
    assert text.count("<h3>dataset=phantom") == 3  # three n_synthetic values: three comparable groups
    for auc in (0.6, 0.65, 0.7):
        assert f"{auc:.3f}" in text
    assert 'id="ratio"' in text
    ratio = Image.open(tmp_path / "synthetic_ratio.png")
    assert ratio.size[0] > 1000
    assert ratio.size in [image.size for image in decoded_images(text)]
    assert_offline(text)


def test_folder_without_varying_n_synthetic_has_no_ratio_plot(tmp_path):
    write_run(tmp_path, make_result("a", seed=0))
    write_run(tmp_path, make_result("b", generator="dermaflux"))
    text = write_report(tmp_path).read_text()
    assert 'id="ratio"' not in text and not (tmp_path / "synthetic_ratio.png").exists()
    assert "★" in text or 'class="best"' in text


def test_roc_curve_points_give_the_sklearn_auc():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    scores = np.clip(0.3 * labels + rng.uniform(0, 0.8, 200), 0, 1)
    fpr, tpr = plots.roc_curve_points(labels, scores)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert plots.roc_curve_points([1, 1, 1], [0.2, 0.4, 0.9]) is None


def test_palette_is_okabe_ito_and_arms_keep_their_colours():
    assert set(plots.ARM_COLOURS.values()) <= set(plots.OKABE_ITO)
    assert len(set(plots.ARM_COLOURS.values())) == len(plots.ARM_COLOURS)


def test_cli_report(run_dir, tmp_path):
    runner = CliRunner()
    target = tmp_path / "out" / "r.html"
    ok = runner.invoke(app, ["report", str(run_dir / "result.json"), "--out", str(target)])
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.strip() == f"wrote {target}"
    assert "<!DOCTYPE html>" in target.read_text()
    missing = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert missing.exit_code == 2
    assert missing.stderr.strip().splitlines() == [f"error: no such run or results folder: {tmp_path / 'nope'}"]
    empty = tmp_path / "empty"
    empty.mkdir()
    none = runner.invoke(app, ["report", str(empty)])
    assert none.exit_code == 2 and "no finished runs" in none.stderr
    bad_out = runner.invoke(app, ["report", str(run_dir), "--out", str(tmp_path / "r.pdf")])
    assert bad_out.exit_code == 2 and "must be an .html file" in bad_out.stderr


@pytest.mark.skipif(not shutil.which("chromium"), reason="headless Chromium (Debian package `chromium`) not installed")
def test_headless_chromium_renders_the_report(run_dir, tmp_path):
    """The report opens from disk in a real browser: the screenshot is a tall page with the plots' colours in it."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from report_screenshot import screenshot

    # installed but failing to start is a failure, not a skip
    png = screenshot(write_report(run_dir), tmp_path / "shot.png", 1280, 3000)
    pixels = np.asarray(Image.open(png).convert("RGB"))
    assert pixels.shape[:2] == (3000, 1280)
    blue = np.array([0x00, 0x72, 0xB2])  # the real+synthetic curve and the section rules
    assert (np.abs(pixels.astype(int) - blue).sum(axis=2) < 30).sum() > 500
