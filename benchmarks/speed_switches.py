"""Speed switches, each measured on and off: why dermabench turns it on, or leaves it off, on this CPU.

* channels-last memory format, which `cnn` and `efficientnet` train in: one
  training epoch of each classifier with and without it;
* channels-last and torch.compile (inductor) for the fidelity step's
  EfficientNet-Lite0 feature pass, which runs eager and channels-last (for the
  speed-up measured here): the compiled figure, against the contiguous pass, is
  the steady state, its one-off compile time is given beside;
* torch threads: the same feature pass on one thread vs torch's default (one per
  physical core), which dermabench keeps.

Each figure is the speed-up of the switch (time off / time on, > 1: the switch
helps), the two sides timed alternately.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from benchmarks.measure import Figure, Timing, ratio, time_pair
from dermabench import plugins
from dermabench.api import RunContext


def speedup(name: str, off: Timing, on: Timing, **detail) -> Figure:
    value, spread = ratio(off, on)
    return Figure("speed switches", name, value, "× faster", spread, "", None,
                  {"off": off.to_dict(), "on": on.to_dict(), **detail})


def classifier_channels_last(repeats: int, n_train: int, n_val: int, epoch_size: int, size: int) -> list[Figure]:
    from dermabench_plugins.phantom import PhantomDataset

    samples = list(PhantomDataset(n=n_train + n_val, size=size).samples())
    train, val = samples[:n_train], samples[n_train:]
    figures = []
    for name in ("cnn", "efficientnet"):
        make = plugins.get("classifier", name).cls
        with tempfile.TemporaryDirectory() as tmp:
            context = RunContext(device="cpu", image_size=size, work_dir=Path(tmp), profile="quick")

            def epoch(channels_last: bool):
                clf = make(epochs=1, patience=0, epoch_size=epoch_size)
                clf.channels_last = channels_last
                clf.fit(train, val, context)

            on, off = time_pair(lambda: epoch(True), lambda: epoch(False), repeats)
        figures.append(speedup(f"channels-last: one epoch of {name} ({epoch_size} images, {size} px)", off, on))
    return figures


def feature_pass(repeats: int, n_images: int, input_size: int, compile: bool = True) -> list[Figure]:
    from dermabench_plugins.efficientnet_lite0 import build_model, weights_path

    torch.manual_seed(0)
    x = torch.rand(n_images, 3, input_size, input_size) * 2 - 1
    model = build_model(weights_path()).eval()
    what = f"EfficientNet-Lite0 features, {n_images} images at {input_size} px"

    def features(net, batch):
        with torch.inference_mode():
            for start in range(0, len(batch), 64):
                net.forward_head(net.forward_features(batch[start : start + 64]), pre_logits=True)

    eager = lambda: features(model, x)  # noqa: E731
    figures = []

    last_model = build_model(weights_path()).eval().to(memory_format=torch.channels_last)
    x_last = x.contiguous(memory_format=torch.channels_last)
    on, off = time_pair(lambda: features(last_model, x_last), eager, repeats)
    figures.append(speedup(f"channels-last: {what}", off, on))

    threads = torch.get_num_threads()

    def one_thread():
        torch.set_num_threads(1)
        try:
            eager()
        finally:
            torch.set_num_threads(threads)

    on, off = time_pair(eager, one_thread, repeats)
    figures.append(speedup(f"{threads} torch threads vs 1: {what}", off, on, threads=threads))

    if not compile:
        return figures
    compiled = torch.compile(build_model(weights_path()).eval())
    start = time.perf_counter()
    try:
        features(compiled, x[:64])  # compiles (batch 64); the timed calls reuse it
    except Exception as exc:  # noqa: BLE001 - no working C++ toolchain: report it, keep the other figures
        figures.append(Figure("speed switches", f"torch.compile: {what}", float("nan"), "× faster", None, "", None,
                              {"error": f"{type(exc).__name__}: {exc}"[:500]}))
        return figures
    compile_s = time.perf_counter() - start
    on, off = time_pair(lambda: features(compiled, x), eager, repeats)
    figures.append(speedup(f"torch.compile: {what} (compile {compile_s:.0f} s once)", off, on,
                           compile_seconds=compile_s))
    return figures


def run(repeats: int, smoke: bool = False) -> list[Figure]:
    if smoke:
        return classifier_channels_last(repeats, 32, 16, 32, 32) + feature_pass(repeats, 8, 64, compile=False)
    return classifier_channels_last(repeats, 512, 128, 256, 64) + feature_pass(repeats, 256, 128)
