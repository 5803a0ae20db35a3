"""Generation: images/s of the tiny `dermaflux` and `sd15` through dermabench vs the same pipeline called directly.

dermabench's side is what a run does: `generation.generate_and_store` (shards of
prompts, the plugin's `generate` with per-prompt seeds and cached prompt
embeddings, the contract check, resizing, the atomic `.npz` cache write). The
direct side is what a user's own script would do with the same diffusers
pipeline object: `pipe(prompt=texts, generator=[one per prompt], ...)` with the
same batch size, steps, guidance and size, images kept as PIL. The models are
the untrained tiny ones (`train=none`): speed does not depend on the weights.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from benchmarks.measure import Figure, ratio_figure, time_pair
from dermabench import plugins
from dermabench.api import Prompt, RunContext
from dermabench.generation import generate_and_store

TEXTS = (
    "This photo depicts a benign lesion. Here's a description of the mole: symmetric, regular border, brown.",
    "This photo depicts a malignant lesion. Here's a description of the mole: asymmetric, irregular border, "
    "several colours.",
)


def prompts(n: int) -> list[Prompt]:
    return [Prompt(TEXTS[i % 2], i % 2, 1000 + i) for i in range(n)]


def _direct_call(name: str, pipe, opts: dict, batch: list[Prompt], size: int):
    common = dict(
        prompt=[p.text for p in batch],
        height=size,
        width=size,
        num_inference_steps=opts["steps"],
        guidance_scale=opts["guidance"],
        generator=[torch.Generator("cpu").manual_seed(p.seed) for p in batch],
    )
    if name == "dermaflux":
        common["max_sequence_length"] = opts["max_sequence_length"]
    return pipe(**common).images


def run(n_images: int, repeats: int, image_size: int = 64, device: str = "cpu",
        group: str = "overhead") -> list[Figure]:
    figures = []
    for name in ("dermaflux", "sd15"):
        generator = plugins.get("generator", name).cls(model="tiny", train="none")
        with tempfile.TemporaryDirectory() as tmp:
            context = RunContext(device=device, image_size=image_size, work_dir=Path(tmp), profile="quick")
            generator.fit([], context)
            opts = generator.resolved(context)
            pipe = generator.load(context)
            batch_size = opts["batch_size"]
            todo = prompts(n_images)
            calls = iter(range(10**6))

            def ours():
                # a fresh cache file each call: time generation, not a cache hit
                return generate_and_store(generator, todo, context, Path(tmp) / f"images-{next(calls)}.npz")

            def direct():
                images = []
                for start in range(0, len(todo), batch_size):
                    images += _direct_call(name, pipe, opts, todo[start : start + batch_size], image_size)
                return images

            ours_t, direct_t = time_pair(ours, direct, repeats)
        figure = ratio_figure(
            group,
            f"generation, {name} tiny on {device} ({n_images} images, {opts['steps']} steps, batch {batch_size})",
            ours_t, direct_t, images_per_s_dermabench=n_images / ours_t.median,
            images_per_s_direct=n_images / direct_t.median,
        )
        figures.append(figure)
    return figures
