"""End to end: `dermabench run` wall time and peak memory, first run vs re-run with caches; how cost grows with N.

Each run is a fresh `python -m dermabench run` process (what a user types), its
peak RSS read from the kernel's accounting of that process (`os.wait4`).

* first run vs re-run: the same command twice into one results folder, the second
  with `--force` (a new run beside the finished one, so it redoes every step but
  finds the split, captions, generator fit, generated images, features and
  classifier fits in `<out>/.cache`).
* scaling: the `smoke` profile with k = 1, 2, 4 times its real and synthetic images
  (each in a fresh folder, nothing cached), on one phantom population large enough
  for the largest k. The exponent b of wall ≈ a · k^b is the least-squares slope in
  log-log, for the whole run and for the steps whose work depends on N.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.measure import Figure

#: the protocol steps whose work grows with the number of images (the rest: imports, model builds, fits)
SIZED_STEPS = ("load", "split", "captions", "generate", "fidelity", "classify")


def dermabench_run(args: list[str], log: Path) -> dict:
    """Run `python -m dermabench run ARGS`; wall seconds, peak RSS (GiB) and the result JSON."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "dermabench", "run", "-q", *args], stdout=out,
                                   stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"dermabench run {' '.join(args)} exited {code}; see {log}")
    out_dir = Path(args[args.index("--out") + 1])
    newest = max(out_dir.glob("*/result.json"), key=lambda p: p.stat().st_mtime)
    return {"wall_s": wall, "peak_rss_gib": usage.ru_maxrss / 2**20, "result": json.loads(newest.read_text())}


def first_and_rerun(extra: list[str], profile: str, log: Path) -> list[Figure]:
    with tempfile.TemporaryDirectory() as tmp:
        args = ["--profile", profile, "--out", tmp, *extra]
        first = dermabench_run(args, log)
        again = dermabench_run([*args, "--force"], log)
    generator = first["result"]["config"]["generator"]
    share = again["wall_s"] / first["wall_s"]
    what = f"`{profile}` ({generator}, {first['result']['config']['classifier']}, {first['result']['config']['dataset']})"
    limit_s = 600 if profile == "quick" else None
    return [
        Figure("end to end", f"{what}: first run, wall", first["wall_s"], "s", None,
               "≤ 600 s" if limit_s else "", first["wall_s"] <= limit_s if limit_s else None,
               {"timings_s": first["result"]["timings_s"]}),
        Figure("end to end", f"{what}: first run, peak RSS", first["peak_rss_gib"], "GiB", None, "≤ 6 GiB",
               first["peak_rss_gib"] <= 6),
        Figure("end to end", f"{what}: re-run with caches (--force), wall", again["wall_s"], "s", None,
               "", None, {"timings_s": again["result"]["timings_s"]}),
        Figure("end to end", f"{what}: re-run / first run", share * 100, "%", None, "≤ 15 %", share <= 0.15),
    ]


def slope(ks: list[float], seconds: list[float]) -> float:
    xs, ys = [math.log(k) for k in ks], [math.log(s) for s in seconds]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def scaling(extra: list[str], ks: tuple[int, ...], log: Path, n_real: int = 120, n_synthetic: int = 120) -> list[Figure]:
    population = 4 * n_real * max(ks)  # the train pool is 60 % of the population: room for the largest k
    runs = []
    for k in ks:
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(dermabench_run(
                ["--profile", "smoke", "--out", tmp, "--n-real", str(n_real * k), "--n-synthetic",
                 str(n_synthetic * k), "--dataset-opt", f"n={population}", *extra], log))
    walls = [r["wall_s"] for r in runs]
    sized = [sum(r["result"]["timings_s"].get(step, 0.0) for step in SIZED_STEPS) for r in runs]
    detail = {"k": list(ks), "wall_s": walls, "sized_steps_s": sized, "sized_steps": list(SIZED_STEPS),
              "timings_s": [r["result"]["timings_s"] for r in runs], "phantom_n": population}
    label = f"`smoke` with k × ({n_real} real + {n_synthetic} synthetic), k = {', '.join(map(str, ks))}"
    return [
        Figure("scaling", f"{label}: exponent of wall time", slope(ks, walls), "", None, "", None, detail),
        Figure("scaling", f"{label}: exponent of the N-dependent steps", slope(ks, sized), "", None, "", None),
    ]
