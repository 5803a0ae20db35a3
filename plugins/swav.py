"""A ResNet-50 trained with SwAV (Caron et al. 2020) as the feature extractor, from a local weights file.

In a MICCAI 2024 study of medical-image generators (Woodland et al., "Feature
extraction for generative medical imaging evaluation: new evidence against an
evolving trend"), the Fréchet distance in SwAV ResNet-50 features was the one that
agreed significantly with radiologists' judgement of realism.

Weights: `--extractor-opt weights=PATH` to a facebookresearch/swav checkpoint such
as `swav_800ep_pretrain.pth.tar` (https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar);
without the option, that file in torch hub's checkpoint folder (where
`torch.hub.load("facebookresearch/swav:main", "resnet50")` puts it). Nothing is
downloaded. The file is read with `weights_only=True` (tensors only, no code). Both
layouts are accepted: a flat state dict (the released files) or a training
checkpoint with a "state_dict" entry; keys may carry DistributedDataParallel's
`module.` prefix. As in swav's own hubconf.py the trunk is torchvision's
`resnet50`; the SwAV projection head and prototypes are dropped. Every trunk
tensor must be present with its shape; anything else in the file is an error.

Features: the 2048-d global-average-pooled output of the last stage (torchvision's
`avgpool`, fc replaced by identity). Images: the full image resized (PIL bicubic,
antialiased, no crop) to `input_size` (default 224), ImageNet mean/std normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

import dermabench
from dermabench.options import Option, parse_options
from dermabench_plugins.extractor_support import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelCache,
    existing_file,
    extract_in_batches,
    load_state_dict_file,
    resize_normalise,
    weights_fingerprint,
)

WEIGHTS_FILE = "swav_800ep_pretrain.pth.tar"
WEIGHTS_URL = f"https://dl.fbaipublicfiles.com/deepcluster/{WEIGHTS_FILE}"
FEATURE_DIM = 2048
DEFAULT_INPUT_SIZE = 224
#: parts of a SwAV checkpoint that are not the ResNet-50 trunk
DROPPED_PREFIXES = ("projection_head.", "prototypes.", "fc.")
_MODELS = ModelCache()


def default_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def resolve_weights(weights: str | None) -> Path:
    if weights is not None:
        return existing_file(weights, "extractor 'swav'")
    path = default_weights_path()
    if not path.is_file():
        raise dermabench.PluginError(
            f"extractor 'swav' needs the SwAV ResNet-50 weights: pass --extractor-opt weights=PATH "
            f"(e.g. {WEIGHTS_FILE} from {WEIGHTS_URL}); not found at the default {path} either"
        )
    return path


def trunk_state_dict(checkpoint: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The ResNet-50 trunk tensors of a SwAV checkpoint, keys as in torchvision's resnet50."""
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict):
        raise dermabench.PluginError(f"extractor 'swav': {path} has a 'state_dict' that is not a dict")
    trunk = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith(DROPPED_PREFIXES):
            continue
        if not isinstance(value, torch.Tensor):
            raise dermabench.PluginError(f"extractor 'swav': {path}: entry '{key}' is not a tensor")
        trunk[key] = value
    return trunk


def build_model(path: Path) -> torch.nn.Module:
    """torchvision resnet50 with the SwAV trunk from `path`, fc = identity (2048-d pooled output)."""
    from torchvision.models import resnet50

    model = resnet50(weights=None)
    model.fc = torch.nn.Identity()
    trunk = trunk_state_dict(load_state_dict_file(path, "extractor 'swav'"), path)
    expected = model.state_dict()
    # num_batches_tracked only counts training steps; some exports leave it out
    missing = [k for k in expected if k not in trunk and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in trunk if k not in expected]
    wrong = [
        f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
        for k, v in trunk.items()
        if k in expected and v.shape != expected[k].shape
    ]
    found = {"missing trunk tensors": missing, "unexpected entries": unexpected, "shape mismatches": wrong}
    problems = [f"{len(keys)} {what}, e.g. {', '.join(keys[:3])}" for what, keys in found.items() if keys]
    if problems:
        raise dermabench.PluginError(
            f"extractor 'swav': {path} is not a SwAV ResNet-50 checkpoint: {'; '.join(problems)}"
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in trunk.items()}, strict=False)
    return model


class SwAVResNet50(dermabench.FeatureExtractor):
    """SwAV ResNet-50 (self-supervised on ImageNet), 2048-d pooled features, from a local weights file."""

    name = "swav"
    description = "SwAV ResNet-50 (local weights=FILE), 2048-d pooled features"

    OPTIONS: ClassVar[dict[str, Option]] = {
        "weights": Option("str", None, help=f"local {WEIGHTS_FILE}", optional=True),
        "input_size": Option("int", DEFAULT_INPUT_SIZE, help="side the images are resized to", min=32),
        "batch_size": Option("int", 32, help="images per forward pass", min=1),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        config = parse_options("extractor 'swav'", options, self.OPTIONS)
        self.input_size, self.batch_size = config["input_size"], config["batch_size"]
        self.weights = resolve_weights(config["weights"])

    def describe(self) -> dict[str, Any]:
        return {
            "extractor": self.name,
            "model": "torchvision resnet50, SwAV trunk (projection head and prototypes dropped)",
            "weights": self.weights.name,
            "weights_sha256": weights_fingerprint(self.weights),
            "layer": "avgpool",
            "dim": FEATURE_DIM,
            "input_size": self.input_size,
            "resize": "PIL bicubic (antialiased), full image to input_size x input_size, no crop",
            "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        }

    def extract(self, images: Sequence[Image.Image], context: dermabench.RunContext | None = None) -> np.ndarray:
        device = context.device if context is not None else "cpu"
        key = (str(self.weights), weights_fingerprint(self.weights), str(torch.device(device)))
        model = _MODELS.get(key, lambda: build_model(self.weights).to(device))

        def forward(batch: Sequence[Image.Image]) -> torch.Tensor:
            return model(resize_normalise(batch, self.input_size).to(device))

        return extract_in_batches(images, self.batch_size, FEATURE_DIM, forward, context, "swav")


@dermabench.hookimpl
def register_extractors(register):
    register(SwAVResNet50)
