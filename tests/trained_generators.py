"""What the tests of the trained generators (`dermaflux`, `sd15`/`sdxl`) share: toy captioned lesions,
prompts, a 32 px run context and the options of the `micro` models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

import dermabench

SIZE = 32
#: the `micro` presets train a LoRA / full model in well under a second per few steps
MICRO = {"model": "micro", "steps": "3", "batch_size": "8", "checkpoint_every": "0"}


def ctx(tmp_path: Path, profile: str = "smoke", **kw) -> dermabench.RunContext:
    return dermabench.RunContext(seed=0, image_size=SIZE, work_dir=tmp_path, profile=profile, **kw)


def lesion(label: int, i: int) -> Image.Image:
    """A skin-coloured square with a dark disc; malignant discs are bigger and bluer."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    r = 6 + 5 * label + (i % 3)
    disc = (yy - SIZE / 2 - i % 4) ** 2 + (xx - SIZE / 2) ** 2 < r * r
    img = np.empty((SIZE, SIZE, 3), np.uint8)
    img[:] = (220, 180, 160)
    img[disc] = (90, 60, 40) if label == 0 else (60, 50, 90)
    return Image.fromarray(img)


def lesion_pool() -> list[dermabench.Sample]:
    """12 captioned lesions, 6 of each class: a train pool."""
    return [
        dermabench.Sample(
            lesion(label, i),
            label,
            caption=f"This photo depicts a {dermabench.LABEL_NAMES[label]} lesion. diameter about {4 + i} mm.",
        )
        for i in range(6)
        for label in (0, 1)
    ]


def prompts(n=4, seed0=1000):
    return [
        dermabench.Prompt(f"This photo depicts a {dermabench.LABEL_NAMES[i % 2]} lesion.", i % 2, seed0 + i)
        for i in range(n)
    ]


def arrays(images):
    return np.stack([np.asarray(im) for im in images]).astype(int)


def eval_loss(denoiser, data, objective, seed=123):
    """The objective's loss on a fixed batch at fixed timesteps and noise (to see whether training lowers it)."""
    g = torch.Generator().manual_seed(seed)
    x0 = data.latents
    t = torch.linspace(0.1, 0.9, len(x0))
    noise = torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        pred = denoiser.predict(denoiser.module, objective.noisy_input(x0, noise, t), objective.model_time(t),
                                data.conditioning)
    return float(((pred - objective.target(x0, noise, t)) ** 2).mean())
