"""`dermabench fid DIR_A DIR_B`: FID, KID, precision and recall between two folders of images.

For users who only want the numbers. DIR_A is the reference (real images), DIR_B
the images judged (generated): precision is the fraction of B inside A's feature
manifold, recall the fraction of A inside B's (FID and KID are symmetric). Images
are found at any depth (png, jpg, jpeg, webp, bmp, tif, tiff), and go through the
harness's own normalisation (dermabench/images.py: RGB, centre-crop to a square,
antialiased bicubic to --image-size), then through the same extractor plugins and
metric code as protocol step 6, so the numbers match a run's at the same size,
extractor and N. Features are computed in chunks, so memory does not grow with
the number of images.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dermabench import plugins
from dermabench.api import FeatureExtractor, Progress, RunContext, Sample
from dermabench.config import RunConfig
from dermabench.errors import DermabenchError
from dermabench.fidelity_step import extract
from dermabench.generation import plugin_call
from dermabench.images import RESIZE_METHOD, to_square_rgb
from dermabench.metrics.fidelity import fidelity_metrics
from dermabench.results import jsonable

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
DEFAULT_EXTRACTOR = RunConfig.extractor
DEFAULT_IMAGE_SIZE = RunConfig.image_size
MIN_IMAGE_SIZE = 16
#: images decoded and embedded at a time
CHUNK = 256
#: the keys `--json` prints, in this order
JSON_KEYS = (
    "fid",
    "kid_mean",
    "kid_std",
    "kid_subset_size",
    "kid_subsets",
    "precision",
    "recall",
    "extractor",
    "image_size",
    "n_a",
    "n_b",
)


def find_images(folder: Path, name: str) -> list[Path]:
    """Every image file under `folder` (any depth), sorted; at least 2 or a DermabenchError naming the folder."""
    folder = Path(folder)
    if not folder.exists():
        raise DermabenchError(f"{name}: folder not found: {folder}")
    if not folder.is_dir():
        raise DermabenchError(f"{name}: not a folder: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DermabenchError(f"{name}: no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}) under {folder}")
    if len(files) < 2:
        raise DermabenchError(f"{name}: FID, KID and precision/recall need at least 2 images, found 1 in {folder}")
    return files


def load_image(path: Path, size: int) -> Image.Image:
    """The image at `path` normalised like every image the harness uses; a DermabenchError naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return to_square_rgb(image, size)[0]
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DermabenchError(f"cannot read image {path}: {exc}") from None


def folder_features(
    files: Sequence[Path], extractor: FeatureExtractor, context: RunContext, progress: Progress, name: str
) -> np.ndarray:
    chunks = range(0, len(files), CHUNK)
    parts = []
    for start in progress.track(chunks, f"{name}: {len(files)} images", total=len(chunks)):
        samples = [Sample(load_image(path, context.image_size), 0) for path in files[start : start + CHUNK]]
        parts.append(extract(extractor, samples, context, f"the images of {name}"))
    return np.concatenate(parts)


def make_extractor(name: str, options: Mapping[str, Any]) -> FeatureExtractor:
    registered = plugins.get("extractor", name)
    with plugin_call("extractor", name, "__init__"):
        return registered.cls(**options)


def fid_between_folders(
    dir_a: Path,
    dir_b: Path,
    extractor: str | None = None,
    extractor_options: Mapping[str, Any] | None = None,
    image_size: int | None = None,
    device: str = "auto",
    progress: Progress | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The numbers `dermabench fid` prints (JSON_KEYS, plus `extractor_info` and `resize`).

    `extractor` / `image_size` default to a run's (DEFAULT_EXTRACTOR, DEFAULT_IMAGE_SIZE).
    """
    from dermabench.protocol import resolve_device

    extractor = extractor or DEFAULT_EXTRACTOR
    image_size = DEFAULT_IMAGE_SIZE if image_size is None else int(image_size)
    if image_size < MIN_IMAGE_SIZE:
        raise DermabenchError(f"--image-size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
    progress = progress or Progress()
    files_a, files_b = find_images(dir_a, "DIR_A"), find_images(dir_b, "DIR_B")  # bad input fails before any model
    model = make_extractor(extractor, dict(extractor_options or {}))
    context = RunContext(device=resolve_device(device), image_size=image_size, progress=progress)
    features_a = folder_features(files_a, model, context, progress, f"DIR_A {dir_a}")
    features_b = folder_features(files_b, model, context, progress, f"DIR_B {dir_b}")
    numbers = fidelity_metrics(features_a, features_b, seed=seed)
    describe = getattr(model, "describe", None)
    return {
        **{key: numbers[key] for key in ("fid", "kid_mean", "kid_std", "kid_subset_size", "kid_subsets",
                                          "precision", "recall")},
        "extractor": extractor,
        "image_size": image_size,
        "n_a": len(files_a),
        "n_b": len(files_b),
        "extractor_info": dict(describe()) if callable(describe) else {"options": dict(extractor_options or {})},
        "resize": RESIZE_METHOD,
    }


def to_json(numbers: Mapping[str, Any]) -> str:
    """One JSON object with JSON_KEYS, on one line."""
    return json.dumps(jsonable({key: numbers[key] for key in JSON_KEYS}), allow_nan=False)


def format_numbers(numbers: Mapping[str, Any]) -> str:
    """The human-readable report."""
    return "\n".join(
        [
            f"FID        {numbers['fid']:.4f}",
            f"KID        {numbers['kid_mean']:.6f} ± {numbers['kid_std']:.6f} (std over {numbers['kid_subsets']} subsets of {numbers['kid_subset_size']})",
            f"precision  {numbers['precision']:.4f}  (B inside A's manifold)",
            f"recall     {numbers['recall']:.4f}  (A inside B's manifold)",
            f"extractor  {numbers['extractor']}, images at {numbers['image_size']} px",
            f"N          A {numbers['n_a']}, B {numbers['n_b']}",
        ]
    )
