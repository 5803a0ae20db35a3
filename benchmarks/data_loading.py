"""Data loading: images/s of a file dataset decoded from its JPEGs vs served from dermabench's image cache.

What a run's `load` step does: the dataset plugin reads its metadata and finds the
files, every image is decoded, centre-cropped and resized to the run's size, then
validated (`normalise_samples`). Cold: no cache (the files' bytes are in the OS
page cache after the first pass, so this measures decoding, not the disk). Cached:
the same through `ImageCache` after one pass filled it (every file is still
stat-ed, and hashed again if its size, mtime or ctime changed, so an edited file
is never served stale). Both include the plugin's own plan (metadata CSV, folder
scan, matching), which the cache does not shorten. The two are timed alternately,
as the overhead ratios are: on this shared machine the same load varies by up to
2× over minutes, and timing all cold runs before all cached ones let that drift
into the ratio.

HAM10000 from `../shared/data/ham10000` (or $DERMABENCH_HAM10000) when present;
otherwise an image folder of phantom JPEGs written for the purpose.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.measure import Figure, time_pair
from dermabench import plugins
from dermabench.image_cache import ImageCache
from dermabench.images import collector_paused, normalise_samples

HAM10000 = Path(os.environ.get("DERMABENCH_HAM10000", Path(__file__).resolve().parents[2] / "shared/data/ham10000"))


def phantom_folder(root: Path, n: int) -> Path:
    from dermabench_plugins.phantom import PhantomDataset

    for i, sample in enumerate(PhantomDataset(n=n, size=200).samples()):
        folder = root / ("malignant" if sample.label else "benign")
        folder.mkdir(parents=True, exist_ok=True)
        sample.image.convert("RGB").resize((200, 150)).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def run(repeats: int, image_size: int = 64, n_phantom: int = 400, use_ham10000: bool = True) -> list[Figure]:
    with tempfile.TemporaryDirectory() as tmp:
        if use_ham10000 and (HAM10000 / "HAM10000_metadata.csv").is_file():
            name, data_dir = "ham10000", HAM10000
        else:
            name, data_dir = "imagefolder", phantom_folder(Path(tmp) / "images", n_phantom)
        cache_root = Path(tmp) / "image-cache"
        counted = {}
        plan_seconds: list[float] = []  # the plugin's plan, part of both sides

        def load(cached: bool):
            start = time.perf_counter()
            with collector_paused():  # as the run's load step
                dataset = plugins.get("dataset", name).cls(data_dir=str(data_dir))
            plan_seconds.append(time.perf_counter() - start)
            if cached:
                cache = ImageCache(cache_root, image_size)
                dataset.use_image_cache(cache)
            samples, _ = normalise_samples(dataset.samples(), image_size, name)
            counted["n"] = len(samples)

        cached, cold = time_pair(lambda: load(True), lambda: load(False), repeats)  # the warm-up fills the cache
    n = counted["n"]
    speedup = cold.median / cached.median
    what = f"{name}, {n} images → {image_size} px"
    return [
        Figure("data loading", f"{what}: cold (decode)", n / cold.median, "images/s",
               (n / max(cold.seconds), n / min(cold.seconds)), "", None, {"seconds": cold.to_dict()}),
        Figure("data loading", f"{what}: from the image cache", n / cached.median, "images/s",
               (n / max(cached.seconds), n / min(cached.seconds)), "", None,
               {"seconds": cached.to_dict(), "plan_median_s": statistics.median(plan_seconds)}),
        Figure("data loading", f"{what}: cache speed-up", speedup, "×", None, "≥ 10×", speedup >= 10),
    ]
