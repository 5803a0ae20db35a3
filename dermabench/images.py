"""Image validation and normalisation: every image the protocol uses passes through here.

One fixed method for every image, real or synthetic, so that no arm or metric sees
a differently resampled set: convert to RGB, centre-crop to a square, resize with
antialiased bicubic to the run's image size.
"""

from __future__ import annotations

import contextlib
import gc
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from dermabench.api import Sample

RESIZE_METHOD = "centre-crop to square, PIL bicubic (antialiased)"


def to_square_rgb(image: Image.Image, size: int) -> tuple[Image.Image, bool]:
    """The image as RGB, square, size×size. Returns (image, whether its mode was converted)."""
    converted = image.mode != "RGB"
    if converted:
        # 16-bit, 32-bit and float images need a detour through a mode PIL can map to RGB (PIL would clip
        # a float image in [0, 1] to black); palette and alpha images one through RGBA
        if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            array = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0).clip(min=0)
            top = array.max() or 1.0
            image = Image.fromarray((array / top * 255).astype(np.uint8))
        elif image.mode in ("P", "PA", "LA", "RGBA"):
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (0, 0, 0, 255))
            image = Image.alpha_composite(background, image)
        image = image.convert("RGB")
    width, height = image.size
    if width != height:
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None)
    return image, converted


@dataclass
class DataReport:
    """What loading found: counts of images kept, converted and rejected, and why."""

    n_images: int = 0
    converted: Counter = field(default_factory=Counter)  # original mode -> count
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (image id, reason)
    labels: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {
            "n_images": self.n_images,
            "converted_images": sum(self.converted.values()),
            "converted_modes": dict(self.converted),
            "rejected_images": len(self.rejected),
            "rejected": [{"image": image, "reason": reason} for image, reason in self.rejected[:100]],
            "labels": {str(label): count for label, count in sorted(self.labels.items())},
        }


@contextlib.contextmanager
def collector_paused():
    """Python's cyclic garbage collector off for a bulk load, back on after (if it was on).

    A load keeps every object it makes (images, samples, metadata), so the collector finds nothing to
    free, yet each of its full passes walks every object the process holds: with torch, diffusers and
    timm imported that made a cached 10,000-image load up to 1.8× slower and its time erratic. The run's
    load step pauses it for the dataset's plan too: with it on, HAM10000's plan of 10,015 files took
    0.28–0.30 s instead of 0.15–0.20 s.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def normalise_samples(samples: Iterable[Sample], size: int, source: str) -> tuple[list[Sample], DataReport]:
    """Validate every sample; return the usable ones at `size` and a report of what was done.

    The dataset's iterator runs here, with the garbage collector paused (`collector_paused`)."""
    with collector_paused():
        return _normalise(samples, size, source)


def _normalise(samples: Iterable[Sample], size: int, source: str) -> tuple[list[Sample], DataReport]:
    report = DataReport()
    kept: list[Sample] = []
    for index, sample in enumerate(samples):
        image_id = str(sample.meta.get("image_id", index))
        if sample.label not in (0, 1):
            report.rejected.append((image_id, f"label {sample.label!r} is not 0 (benign) or 1 (malignant)"))
            continue
        if not isinstance(sample.image, Image.Image):
            report.rejected.append((image_id, f"not a PIL image but {type(sample.image).__name__}"))
            continue
        # a dataset serving from the image cache hands over RGB images and the file's mode beside them
        mode = sample.meta.get("file_mode", sample.image.mode)
        try:
            image, _ = to_square_rgb(sample.image, size)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # broken file data
            report.rejected.append((image_id, f"cannot decode: {exc}"))
            continue
        if mode != "RGB":
            report.converted[mode] += 1
        meta = {key: value for key, value in sample.meta.items() if key != "file_mode"}
        meta.setdefault("image_id", image_id)
        meta.setdefault("source", source)
        kept.append(replace(sample, image=image, meta=meta))
        report.labels[sample.label] += 1
    report.n_images = len(kept)
    return kept, report


def to_uint8_array(images: Iterable[Image.Image]) -> np.ndarray:
    """Stack RGB images of one size into an (n, h, w, 3) uint8 array."""
    return np.stack([np.asarray(image, dtype=np.uint8) for image in images])
