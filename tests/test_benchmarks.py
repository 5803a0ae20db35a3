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
