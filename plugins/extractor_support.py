"""What the torch feature extractors (`inception`, `dinov2`, `swav`) share.

* `load_state_dict_file`: `torch.load(..., weights_only=True)`, so a weights file can
  hold tensors and plain containers but never code; every failure is one clear
  `PluginError` naming the extractor, the file and the option to pass.
* `weights_fingerprint`: the SHA-256 of a weights file (memoised per path, size and
  mtime); extractors put it in `describe()`, so the result JSON says which weights
  made a number and the host's feature cache misses when the weights change.
* `ModelCache`: one loaded model per (weights, device) per process, shared read-only.
* `resize_normalise` and `extract_in_batches`: PIL → normalised float batches → float64 features.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import dermabench
from dermabench.errors import weights_only_refusal

# the weights file hash and the offline check are shared with the generators (which must not import torch early)
from dermabench_plugins.model_files import hub_offline  # noqa: F401 - re-exported for the extractors
from dermabench_plugins.model_files import sha256_file as weights_fingerprint  # noqa: F401 - re-exported

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def existing_file(path: str | os.PathLike, who: str, option: str = "weights") -> Path:
    """`path` as an absolute Path, or a PluginError naming it and the option."""
    file = Path(os.path.expanduser(str(path))).resolve()
    if not file.is_file():
        what = "is a folder, not a file" if file.is_dir() else "not found"
        raise dermabench.PluginError(f"{who}: weights file {what}: {file} (--extractor-opt {option}=PATH)")
    return file


def load_state_dict_file(path: Path, who: str) -> dict[str, Any]:
    """The dict stored in a torch weights file, loaded with weights_only=True (no code is unpickled)."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for anything but tensors and plain containers, or a broken file
        first = weights_only_refusal(exc)
        raise dermabench.PluginError(
            f"{who}: cannot load {path} as a plain tensor state dict (loaded with weights_only=True, "
            f"so files that need code to unpickle are refused): {first}"
        ) from exc
    if not isinstance(loaded, dict):
        raise dermabench.PluginError(f"{who}: {path} holds a {type(loaded).__name__}, not a state dict")
    return loaded


class ModelCache:
    """Models built once per key (weights identity, device) and shared in eval mode."""

    def __init__(self) -> None:
        self._models: dict[tuple, torch.nn.Module] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
        with self._lock:
            model = self._models.get(key)
            if model is None:
                model = build()
                model.eval()
                model.requires_grad_(False)
                self._models[key] = model
        return model

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


def resize_normalise(
    images: Sequence[Image.Image], size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """RGB images, the full image resized (PIL bicubic, antialiased, no crop) to size×size,
    as float32 N×3×S×S in [0, 1] normalised per channel with `mean` / `std`."""
    arrays = []
    for image in images:
        image = image.convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(image, dtype=np.uint8))
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def extract_in_batches(
    images: Sequence[Image.Image],
    batch_size: int,
    dim: int,
    forward: Callable[[Sequence[Image.Image]], torch.Tensor],
    context: dermabench.RunContext | None,
    label: str,
) -> np.ndarray:
    """Run `forward` (a batch of PIL images → N×dim tensor) over `images`; float64 (n, dim)."""
    images = list(images)
    out = np.empty((len(images), dim), dtype=np.float64)
    if not images:
        return out
    batches = range(0, len(images), batch_size)
    if context is not None:
        batches = context.progress.track(batches, f"{label} features ({len(images)} images)", total=len(batches))
    with torch.inference_mode():
        for start in batches:
            chunk = images[start : start + batch_size]
            features = forward(chunk)
            if tuple(features.shape) != (len(chunk), dim):
                raise dermabench.PluginError(
                    f"{label}: the network gave features of shape {tuple(features.shape)}, expected ({len(chunk)}, {dim})"
                )
            out[start : start + len(chunk)] = features.double().cpu().numpy()
    return out
