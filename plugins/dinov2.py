"""DINOv2 (self-supervised ViT) features through transformers' `Dinov2Model`.

Recent work on generative-model evaluation (Stein et al., NeurIPS 2023) finds that
DINOv2 features rank generated images more like people do than Inception's, and
they are not tied to ImageNet's classes, which matters for dermoscopy.

`--extractor-opt model=PATH_OR_HUB_ID` (default `facebook/dinov2-base`, 768-d):
a local folder saved with `save_pretrained` (config.json + weights), or a hub id.
A hub id is looked up in the local Hugging Face cache only when HF_HUB_OFFLINE /
TRANSFORMERS_OFFLINE is set (`local_files_only`), otherwise downloaded once by
transformers. A model that cannot be found fails when the extractor is made,
naming the model and the option.

Features: the CLS token of the last layer after the final layer norm (transformers'
`pooler_output`, the same vector as the hub DINOv2's `x_norm_clstoken` used by
torch-fidelity and Stein et al.), or with `pool=mean` the mean of the patch tokens.
Images: the full image resized (PIL bicubic, antialiased, no crop) to `input_size`
(default 224, the DINOv2 training resolution; position embeddings are interpolated
for other sizes), ImageNet mean/std normalisation.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
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
    extract_in_batches,
    hub_offline,
    resize_normalise,
    weights_fingerprint,
)

DEFAULT_MODEL = "facebook/dinov2-base"
DEFAULT_INPUT_SIZE = 224
WEIGHT_SUFFIXES = (".safetensors", ".bin")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_MODELS = ModelCache()


def _error(model: str, why: str) -> dermabench.PluginError:
    return dermabench.PluginError(
        f"extractor 'dinov2': cannot load model '{model}': {why}. Pass --extractor-opt model=PATH "
        "(a folder saved with Dinov2Model.save_pretrained: config.json and weights) or a hub id that is in the "
        "Hugging Face cache"
    )


def resolve_model(model: str) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is a local folder); fails fast when it cannot be found."""
    path = Path(os.path.expanduser(model))
    if path.exists():
        if not (path / "config.json").is_file():
            raise _error(model, f"{path.resolve()} has no config.json")
        return str(path.resolve()), True
    if not _HUB_ID.match(model) or model.startswith((".", "~", "/")):
        raise _error(model, f"folder not found: {path}")
    if hub_offline():
        from huggingface_hub import constants, try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model, "config.json"), str):
            raise _error(
                model, f"HF_HUB_OFFLINE is set and it is not in the Hugging Face cache ({constants.HF_HUB_CACHE})"
            )
    return model, False


def config_file(source: str, local: bool) -> Path | None:
    """The model's config.json on disk (local folder or HF cache), if there is one."""
    if local:
        return Path(source) / "config.json"
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(source, "config.json")
    return Path(cached) if isinstance(cached, str) else None


def model_identity(source: str, local: bool) -> str:
    """What pins the weights: a hash of a local folder's weight files, or the cached hub commit."""
    if local:
        digest = hashlib.sha256()
        files = sorted(p for p in Path(source).iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
        for file in files:
            digest.update(f"{file.name}\t{weights_fingerprint(file)}\n".encode())
        return f"sha256:{digest.hexdigest()}" if files else "no weight files"
    cached = config_file(source, local)
    # <cache>/models--org--name/snapshots/<commit>/config.json
    return f"commit:{cached.parent.name}" if cached is not None else "not downloaded yet"


def load_model(source: str, local: bool) -> torch.nn.Module:
    from transformers import Dinov2Model

    try:
        return Dinov2Model.from_pretrained(source, local_files_only=local or hub_offline(), dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise _error(source, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__) from exc


class DINOv2(dermabench.FeatureExtractor):
    """DINOv2 ViT (transformers), CLS-token features; local folder or cached hub id."""

    name = "dinov2"
    description = "DINOv2 ViT via transformers (default facebook/dinov2-base), CLS-token features"

    OPTIONS: ClassVar[dict[str, Option]] = {
        "model": Option("str", DEFAULT_MODEL, help="local folder or hub id"),
        "pool": Option("str", "cls", help="cls: CLS token; mean: mean of the patch tokens", choices=("cls", "mean")),
        "input_size": Option("int", DEFAULT_INPUT_SIZE, help="side the images are resized to", min=14),
        "batch_size": Option("int", 32, help="images per forward pass", min=1),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        config = parse_options("extractor 'dinov2'", options, self.OPTIONS)
        self.model, self.pool = config["model"], config["pool"]
        self.input_size, self.batch_size = config["input_size"], config["batch_size"]
        self.source, self.local = resolve_model(self.model)

    def network(self, device: str) -> torch.nn.Module:
        key = (self.source, model_identity(self.source, self.local), str(torch.device(device)))
        return _MODELS.get(key, lambda: load_model(self.source, self.local).to(device))

    def dim(self) -> int | None:
        """hidden_size from config.json, without loading the model (None before a hub model is downloaded)."""
        path = config_file(self.source, self.local)
        try:
            return int(json.loads(path.read_text())["hidden_size"]) if path is not None else None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def describe(self) -> dict[str, Any]:
        return {
            "extractor": self.name,
            "model": self.source,
            "weights": model_identity(self.source, self.local),
            "layer": "last layer, CLS token after the final layer norm (pooler_output)"
            if self.pool == "cls"
            else "last layer, mean of the patch tokens after the final layer norm",
            "dim": self.dim(),
            "input_size": self.input_size,
            "resize": "PIL bicubic (antialiased), full image to input_size x input_size, no crop",
            "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        }

    def extract(self, images: Sequence[Image.Image], context: dermabench.RunContext | None = None) -> np.ndarray:
        device = context.device if context is not None else "cpu"
        model = self.network(device)

        def forward(batch: Sequence[Image.Image]) -> torch.Tensor:
            out = model(pixel_values=resize_normalise(batch, self.input_size).to(device))
            if self.pool == "cls":
                return out.pooler_output
            return out.last_hidden_state[:, 1:].mean(dim=1)

        return extract_in_batches(images, self.batch_size, model.config.hidden_size, forward, context, "dinov2")


@dermabench.hookimpl
def register_extractors(register):
    register(DINOv2)
