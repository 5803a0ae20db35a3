"""Extracted features on disk, keyed by the images' pixels and everything about the extractor.

Embedding a real train pool of thousands of images is the slowest part of the
fidelity step, and it is the same in every run that shares dataset, split, image
size and extractor (another generator, classifier or seed). The key is

  * the pixels of every image in order (BLAKE2b over mode, size and raw bytes): so
    the split, the dataset files and the image size are all in it, and any change
    to one image misses;
  * the extractor: its name, class, `describe()` (which the built-ins make pin the
    weights: input size, layer, weight-file hash) and its options;
  * the run's image size and the cache format version.

Layout: `<root>/<extractor>-<key>.npy`, one (n, dim) array per image set, written
atomically. Stored as float32 when that is exact (features computed in float32,
the common case), else float64, so a cached run gives bit-identical numbers.
A damaged or mismatched entry is deleted and recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dermabench.api import FeatureExtractor
from dermabench.config import canonical_options
from dermabench.data_fingerprint import image_digest
from dermabench.results import write_bytes_atomic

FORMAT_VERSION = 1


def images_digest(images: Sequence[Image.Image]) -> str:
    """BLAKE2b of the images' digests (mode, size and pixels of each), in order."""
    return hashlib.blake2b(b"".join(image_digest(image) for image in images), digest_size=16).hexdigest()


def extractor_identity(extractor: FeatureExtractor, describe: dict[str, Any]) -> dict[str, Any]:
    cls = type(extractor)
    return {
        "name": extractor.name,
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "describe": describe,
        "options": canonical_options(extractor.options),
    }


class FeatureCache:
    """Features of image sets under `root`; `hits` / `misses` count lookups."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def path(
        self, extractor: FeatureExtractor, describe: dict[str, Any], images: Sequence[Image.Image], image_size: int
    ) -> Path:
        key = {
            "version": FORMAT_VERSION,
            "extractor": extractor_identity(extractor, describe),
            "image_size": image_size,
            "n": len(images),
            "images": images_digest(images),
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", extractor.name) or "extractor"
        return self.root / f"{slug}-{digest}.npy"

    def load(self, path: Path, n: int) -> np.ndarray | None:
        if not path.is_file():
            return None
        try:
            features = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            features = None
        if features is None or features.ndim != 2 or features.shape[0] != n or not np.isfinite(features).all():
            path.unlink(missing_ok=True)  # damaged or foreign: recompute
            return None
        return features.astype(np.float64)

    def store(self, path: Path, features: np.ndarray) -> None:
        as32 = features.astype(np.float32)
        stored = as32 if np.array_equal(as32.astype(np.float64), features) else features
        buffer = io.BytesIO()
        np.save(buffer, stored, allow_pickle=False)
        write_bytes_atomic(path, buffer.getvalue())

    def get_or_compute(
        self,
        extractor: FeatureExtractor,
        describe: dict[str, Any],
        images: Sequence[Image.Image],
        image_size: int,
        compute: Callable[[], np.ndarray],
    ) -> tuple[np.ndarray, bool]:
        """(features, whether they came from the cache); `compute` runs only on a miss."""
        path = self.path(extractor, describe, images, image_size)
        features = self.load(path, len(images))
        if features is not None:
            self.hits += 1
            return features, True
        self.misses += 1
        features = compute()
        self.store(path, features)
        return features, False
