"""The benchmark runner (`python -m benchmarks`) keeps working: its arithmetic, its table, a seconds-long smoke.

The benchmarks themselves are not tests (timing goals live in benchmarks/); here only
the runner's code is checked, on tiny sizes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.__main__ import markdown
from benchmarks.end_to_end import slope
from benchmarks.measure import Figure, Timing, ratio_figure

ROOT = Path(__file__).resolve().parents[1]


def test_slope_is_the_log_log_exponent():
    assert slope([1, 2, 4], [10, 20, 40]) == pytest.approx(1.0)
    assert slope([1, 2, 4], [10, 10 * 2**0.5, 20]) == pytest.approx(0.5)
    assert slope([1, 2, 4], [7, 7, 7]) == pytest.approx(0.0)


def test_ratio_is_median_over_median_with_the_extreme_pairings():
    figure = ratio_figure("overhead", "x", Timing([1.1, 1.0, 1.3]), Timing([1.0, 0.9, 1.2]))
    assert figure.value == pytest.approx(1.1 / 1.0)
    assert figure.spread == pytest.approx((1.0 / 1.2, 1.3 / 0.9))
    assert figure.met is True and figure.target == "≤ 1.10"
    assert ratio_figure("overhead", "y", Timing([2.0]), Timing([1.0])).met is False


def test_markdown_has_one_table_per_group_with_targets():
    figures = [
        Figure("overhead", "generation", 1.04, "×", (1.0, 1.1), "≤ 1.10", True),
        Figure("data loading", "speed-up", 7.0, "×", None, "≥ 10×", False),
    ]
    about = {"date": "d", "git_commit": "abc", "cpu": "cpu", "cores": 2, "torch_threads": 2, "memory_gib": 24,
             "gpu": None, "python": "3.11", "torch": "2", "load_average_at_start": 0.5}
    text = markdown(figures, about, "python -m benchmarks", 60.0)
    assert "## overhead" in text and "## data loading" in text
    assert "| generation | 1.04 × | 1–1.1 | ≤ 1.10 | yes |" in text
    assert "| speed-up | 7 × |  | ≥ 10× | **no** |" in text


def test_runner_smoke_writes_the_table_and_the_json(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--only", "data-loading", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads((tmp_path / "benchmarks.json").read_text())
    names = [f["name"] for f in data["figures"]]
    assert len(names) == 3 and all(f["group"] == "data loading" for f in data["figures"])
    cold, cached, speedup = (f["value"] for f in data["figures"])  # images/s, images/s, ×
    assert cold > 0 and speedup == pytest.approx(cached / cold)
    assert data["figures"][0]["name"].startswith("imagefolder, 24 images")  # smoke: phantom JPEGs, not HAM10000
    assert "## data loading" in (tmp_path / "benchmarks.md").read_text()


def test_the_full_size_architectures_have_the_published_parameter_counts():
    # built on the meta device: shapes only, no memory, so the configs are checked against the real models' sizes
    import torch

    from benchmarks import full_size as fs

    flux = fs.build_flux(fs.FLUX_DEV, "meta", torch.bfloat16)
    assert fs.parameters(flux.transformer) == 11_901_408_320  # FLUX.1-dev's transformer
    assert fs.parameters(flux.text_encoder_2) == 4_762_310_656  # T5-XXL's encoder
    assert fs.parameters(flux.text_encoder) == 123_060_480  # CLIP ViT-L/14's text tower
    assert flux.transformer.config.guidance_embeds and flux.vae.config.latent_channels == 16
    sd15 = fs.build_sd(fs.SD15, "meta", torch.bfloat16, xl=False)
    assert fs.parameters(sd15.unet) == 859_520_964
    assert fs.parameters(sd15.vae) == 83_653_863
    sdxl = fs.build_sd(fs.SDXL, "meta", torch.bfloat16, xl=True)
    assert fs.parameters(sdxl.unet) == 2_567_463_684
    assert fs.parameters(sdxl.text_encoder_2) == 694_659_840  # OpenCLIP bigG's text tower with projection


def test_the_full_size_benchmark_runs_its_phases_on_shrunk_models_on_the_cpu():
    from benchmarks import full_size as fs

    figures = [f for phase in fs.run("cpu", small=True, log=lambda message: None) for f in phase]
    names = [f.name for f in figures]
    assert not [n for n in names if "failed" in n], names
    for label in ("FLUX.1-dev", "SD 1.5", "SDXL"):
        per_image = next(f for f in figures if f.name.startswith(f"{label}, s per image at 64²"))
        assert per_image.unit == "s" and per_image.value > 0
        overhead = next(f for f in figures if f.name.startswith(f"overhead, {label} generation"))
        ours, direct = overhead.detail["dermabench"]["runs"], overhead.detail["direct"]["runs"]
        assert overhead.value == pytest.approx(ours[0] / direct[0])
    fit = next(f for f in figures if "LoRA fit" in f.name and f.unit == "s")
    assert fit.value > 0 and fit.detail["steps"] == 2 and np.isfinite(fit.detail["final_loss"])
    assert next(f for f in figures if "after the LoRA fit" in f.name).value == 64


def test_training_on_cuda_keeps_sdpa_off_cudnn_and_restores_the_switches():
    import torch

    from dermabench_plugins.diffusion_training import _training_attention

    before = torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled()
    with _training_attention(torch.device("cuda")):  # only sets torch's global switches: no GPU needed
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
    assert (torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled()) == before
    with _training_attention(torch.device("cpu")):
        assert torch.backends.cuda.cudnn_sdp_enabled() == before[0]
