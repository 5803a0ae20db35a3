"""Several processes (torchrun / accelerate launch) produce exactly the images and the result of one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from dermabench.processes import Processes

VOLATILE = ("created", "timings_s", "resumed_stages", "environment", "run_id", "git_commit")


def test_every_item_goes_to_exactly_one_process():
    items = list(range(11))
    shares = [Processes(rank, 3).mine(items) for rank in range(3)]
    assert shares == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert all(Processes(rank, 3).owns(i) == (i in shares[rank]) for rank in range(3) for i in items)
    assert Processes().mine(items) == items and Processes().main


def smoke_run(out: Path, processes: int) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    # augment: a generator without a fit, so that the images depend on prompts and seeds alone (a fit under
    # two processes trains data-parallel, with twice the images per step)
    command = [*(launcher if processes > 1 else [sys.executable]), "-m", "dermabench", "run", "--profile", "smoke",
               "--generator", "augment", "--out", str(out), "--quiet"]  # fmt: skip
    # 120 prompts in shards of 50: three shards to share out
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "DERMABENCH_SHARD_SIZE": "50"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)


def test_two_processes_match_one_image_for_image_and_metric_for_metric(tmp_path):
    runs = {}
    for n in (1, 2):
        done = smoke_run(tmp_path / f"p{n}", n)
        assert done.returncode == 0, done.stdout + done.stderr
        [result] = (tmp_path / f"p{n}").rglob("result.json")
        [images] = (tmp_path / f"p{n}" / ".cache" / "generated").glob("*.npz")
        with np.load(images) as stored:
            runs[n] = json.loads(result.read_text()), stored["images"].copy()
    (one, one_images), (two, two_images) = runs[1], runs[2]
    assert one_images.shape == (120, 64, 64, 3) and np.array_equal(one_images, two_images)
    for key in set(one) | set(two):
        if key not in VOLATILE and key != "config":
            assert one[key] == two[key], key
    assert {k: v for k, v in one["config"].items() if k != "out"} == {
        k: v for k, v in two["config"].items() if k != "out"
    }
    assert one["arms"]["real"]["auc"] == two["arms"]["real"]["auc"]
