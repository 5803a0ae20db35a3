"""Inception-v3 as in the original FID: torch-fidelity's `inception-v3-compat`, 2048-d pool3 features.

The network is torch-fidelity's own `FeatureExtractorInceptionV3` (the TensorFlow
2015-12-05 Inception graph ported to PyTorch, bit-compatible with the TF FID
code), so numbers are comparable with torch-fidelity, pytorch-fid and the FID
literature at the same N. It takes uint8 images of any size and resizes them to
299 × 299 itself with a TF-1.x-compatible bilinear interpolation, then scales
pixels to [-1, 1].

Weights, in this order:
  1. `--extractor-opt weights=PATH`: a local `weights-inception-2015-12-05-6726825d.pth`;
  2. torch-fidelity's usual download location, `<torch hub dir>/checkpoints/<that file>`
     (`torch.hub.get_dir()`, i.e. $TORCH_HOME/hub, by default ~/.cache/torch/hub), where
     torch-fidelity and earlier runs leave it;
  3. one download from torch-fidelity's release URL into that location, unless
     HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set. No retries: without network this
     fails in well under a second with an error naming the missing file and the option.
Unlike torch-fidelity (`torch.load(..., weights_only=False)`), the file is read with
`weights_only=True`: it must hold tensors only, and no code in it is ever run.
"""

from __future__ import annotations

import os
import tempfile
import threading
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

import numpy as np
import torch
from PIL import Image

import dermabench
from dermabench.options import Option, parse_options
from dermabench_plugins.extractor_support import (
    ModelCache,
    existing_file,
    extract_in_batches,
    hub_offline,
    load_state_dict_file,
    weights_fingerprint,
)

WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
FEATURE_NAME = "inception-v3-compat"
FEATURE_LAYER = "2048"
FEATURE_DIM = 2048
INPUT_SIZE = 299  # FeatureExtractorInceptionV3.INPUT_IMAGE_SIZE
DOWNLOAD_TIMEOUT_S = 30
RESIZE_METHOD = (
    "inside the network (torch-fidelity): TF-1.x-compatible bilinear from the run's image size to 299x299, "
    "pixels scaled to [-1, 1]"
)

_MODELS = ModelCache()
_BUILD_LOCK = threading.Lock()


def default_weights_path() -> Path:
    """Where torch-fidelity's `load_state_dict_from_url` keeps the weights: <torch hub dir>/checkpoints/."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def _missing(path: Path, why: str) -> dermabench.PluginError:
    return dermabench.PluginError(
        f"extractor 'inception': the Inception-v3 FID weights are not available: {path} not found ({why}). "
        f"Copy {WEIGHTS_FILE} (from {WEIGHTS_URL}) there or pass --extractor-opt weights=PATH"
    )


def download_weights(destination: Path) -> Path:
    """One download attempt of torch-fidelity's weights file to `destination` (atomic rename)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle, urllib.request.urlopen(WEIGHTS_URL, timeout=DOWNLOAD_TIMEOUT_S) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                handle.write(block)
        os.replace(tmp, destination)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return destination


def resolve_weights(weights: str | None) -> Path:
    """The local weights file to use (see the module docstring for the order); may download once."""
    if weights is not None:
        return existing_file(weights, "extractor 'inception'")
    path = default_weights_path()
    if path.is_file():
        return path
    if hub_offline():
        raise _missing(path, "HF_HUB_OFFLINE is set, so nothing is downloaded")
    try:
        return download_weights(path)
    except OSError as exc:  # URLError, timeouts, HTTP errors, a read-only cache folder
        raise _missing(path, f"the download failed: {getattr(exc, 'reason', None) or exc}") from exc


def build_model(state_dict: dict[str, Any]) -> torch.nn.Module:
    """torch-fidelity's FeatureExtractorInceptionV3 (2048-d features) holding `state_dict`.

    torch-fidelity's constructor loads its weights itself (download, or an unsafe
    `torch.load`); here its loader is handed the state dict we already read with
    weights_only=True. Its own strict `load_state_dict` checks every key and shape.
    """
    from torch_fidelity import feature_extractor_inceptionv3 as tf_inception

    with _BUILD_LOCK, mock.patch.object(tf_inception, "load_state_dict_from_url", lambda *args, **kwargs: state_dict):
        try:
            return tf_inception.FeatureExtractorInceptionV3(FEATURE_NAME, [FEATURE_LAYER], verbose=False)
        except RuntimeError as exc:  # missing/unexpected keys or shape mismatches
            raise dermabench.PluginError(
                f"extractor 'inception': the weights do not fit torch-fidelity's Inception-v3: "
                f"{' '.join(str(exc).split())[:400]}"
            ) from exc


def get_model(path: Path, device: str) -> torch.nn.Module:
    key = (str(path), weights_fingerprint(path), str(torch.device(device)))
    return _MODELS.get(key, lambda: build_model(load_state_dict_file(path, "extractor 'inception'")).to(device))


class InceptionV3(dermabench.FeatureExtractor):
    """The standard FID backbone: torch-fidelity's inception-v3-compat, 2048-d pool3 features."""

    name = "inception"
    description = "Inception-v3 (torch-fidelity inception-v3-compat, the standard FID), 2048-d pool3 features"

    OPTIONS: ClassVar[dict[str, Option]] = {
        "weights": Option("str", None, help=f"local {WEIGHTS_FILE}", optional=True),
        "batch_size": Option("int", 32, help="images per forward pass", min=1),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        config = parse_options("extractor 'inception'", options, self.OPTIONS)
        self.batch_size = config["batch_size"]
        self.weights = resolve_weights(config["weights"])  # fails here, before any image is read

    def describe(self) -> dict[str, Any]:
        return {
            "extractor": self.name,
            "model": f"torch-fidelity {FEATURE_NAME} (FeatureExtractorInceptionV3)",
            "weights": self.weights.name,
            "weights_sha256": weights_fingerprint(self.weights),
            "layer": f"{FEATURE_LAYER} (pool3)",
            "dim": FEATURE_DIM,
            "input_size": INPUT_SIZE,
            "resize": RESIZE_METHOD,
            "normalization": "(x - 128) / 128",
        }

    def extract(self, images: Sequence[Image.Image], context: dermabench.RunContext | None = None) -> np.ndarray:
        device = context.device if context is not None else "cpu"
        model = get_model(self.weights, device)

        def forward(batch: Sequence[Image.Image]) -> torch.Tensor:
            # the network resizes each stacked group itself; images of one size are stacked together
            arrays = [np.asarray(image.convert("RGB"), dtype=np.uint8) for image in batch]
            out, start = [], 0
            while start < len(arrays):
                end = start + 1
                while end < len(arrays) and arrays[end].shape == arrays[start].shape:
                    end += 1
                x = torch.from_numpy(np.stack(arrays[start:end])).permute(0, 3, 1, 2).contiguous().to(device)
                out.append(model(x)[0])
                start = end
            return torch.cat(out)

        return extract_in_batches(images, self.batch_size, FEATURE_DIM, forward, context, "inception")


@dermabench.hookimpl
def register_extractors(register):
    register(InceptionV3)
