"""`augment`: the classical-augmentation baseline a generative model must beat.

`fit` keeps the train pool's images by label. For each prompt, `generate` picks
one train image of the prompt's label and transforms it with random flips,
90° rotations, a random resized crop (area `min_scale`–1.0, aspect 3/4–4/3,
resized back to the source size) and colour jitter (brightness, contrast,
saturation ± `jitter`). Every draw, the choice of source image included, comes
from an RNG seeded by the prompt's seed alone, so an image does not depend on
its batch or its position (nor on the run seed except through the prompt seed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from PIL import Image, ImageEnhance

import dermabench
from dermabench.api import LABEL_NAMES
from dermabench.errors import PluginError
from dermabench.seeding import derive_seed
from dermabench_plugins.image_classifier import Option, parse_options

#: bump when the transforms change, so cached images are not reused
ALGORITHM_VERSION = "1"


class AugmentGenerator(dermabench.Generator):
    """Synthetic set = randomly transformed copies of real train images (flips, rotations, crops, colour)."""

    name = "augment"
    description = "classical augmentation of real train images (flips, 90° rotations, crops, colour jitter)"

    option_specs: ClassVar[dict[str, Option]] = {
        "min_scale": Option("float", 0.7, "smallest crop area as a fraction of the image", min=0,
                            min_inclusive=False, max=1),
        "jitter": Option("float", 0.2, "brightness/contrast/saturation change, ± this fraction", min=0, max=1,
                         max_inclusive=False),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.config = parse_options(f"generator '{self.name}'", options, self.option_specs, "--generator-opt")
        self._pool: dict[int, list[Image.Image]] | None = None

    def fit(self, train: Sequence[dermabench.Sample], context: dermabench.RunContext) -> None:
        pool: dict[int, list[Image.Image]] = {0: [], 1: []}
        for sample in train:
            if sample.label not in pool:
                raise PluginError(f"generator '{self.name}': label must be 0 or 1, got {sample.label!r}")
            image = sample.image
            pool[sample.label].append(image if image.mode == "RGB" else image.convert("RGB"))
        self._pool = pool

    def cache_key(self) -> dict[str, Any]:
        # the images also depend on the train pool, which the host's key must cover (dataset + split)
        return {"algorithm": ALGORITHM_VERSION}

    def generate(self, prompts: Sequence[dermabench.Prompt], context: dermabench.RunContext) -> list[Image.Image]:
        if self._pool is None:
            raise PluginError(f"generator '{self.name}': generate called before fit (it needs the train images)")
        for label in sorted({p.label for p in prompts}):
            if label not in self._pool:
                raise PluginError(f"generator '{self.name}': prompt label must be 0 or 1, got {label!r}")
            if not self._pool[label]:
                raise PluginError(
                    f"generator '{self.name}': the train pool has no {LABEL_NAMES[label]} images to augment"
                )
        return [self.augment(self._pool[p.label], p.seed) for p in prompts]

    def augment(self, pool: Sequence[Image.Image], seed: int) -> Image.Image:
        """One transformed copy of a pool image; the same seed gives the same image."""
        rng = np.random.default_rng(derive_seed(seed, "augment"))
        source = pool[int(rng.integers(len(pool)))]
        width, height = source.size
        image = source
        # random resized crop: area fraction in [min_scale, 1], aspect ratio in [3/4, 4/3] (log-uniform)
        for _ in range(10):
            area = rng.uniform(self.config["min_scale"], 1.0) * width * height
            aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
            w = int(round(np.sqrt(area * aspect)))
            h = int(round(np.sqrt(area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                left = int(rng.integers(0, width - w + 1))
                top = int(rng.integers(0, height - h + 1))
                image = image.resize((width, height), Image.Resampling.BICUBIC, box=(left, top, left + w, top + h))
                break
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        turns = int(rng.integers(4))
        if turns:
            image = image.transpose(
                (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)[turns - 1]
            )
            if image.size != (width, height):  # a quarter turn of a non-square image
                image = image.resize((width, height), Image.Resampling.BICUBIC)
        j = self.config["jitter"]
        for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            image = enhancer(image).enhance(float(rng.uniform(1 - j, 1 + j)))
        if image is source:
            image = source.copy()
        return image.convert("RGB")


@dermabench.hookimpl
def register_generators(register):
    register(AugmentGenerator)
