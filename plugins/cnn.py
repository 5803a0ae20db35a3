"""`cnn`: a small convolutional network trained from scratch, the default classifier of the quick profile.

Four blocks of 3×3 convolution → BatchNorm → ReLU → 2×2 max-pool (widths
`width`·(1, 2, 4, 8), i.e. 32-64-128-256 by default; the first convolution has
stride 2 for inputs of 48 px and more), global average pooling, dropout and one
logit, run in channels-last memory format. Fast on a CPU at 64 px; no pretrained weights, so it
needs no network. Training (augmentation, class balance, the fixed step budget
shared by all arms, validation-AUC model selection, early stopping) is the
shared loop in `dermabench_plugins.image_classifier`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import dermabench
from dermabench_plugins.image_classifier import Option, TorchImageClassifier

if TYPE_CHECKING:
    import torch


class CNNClassifier(TorchImageClassifier):
    """Small 4-block CNN from scratch. Options: the shared ones plus `width` and `dropout`."""

    name = "cnn"
    description = "small 4-block CNN trained from scratch (fast on CPU; the quick-profile default)"

    channels_last = True
    option_specs: ClassVar[dict[str, Option]] = {
        **TorchImageClassifier.option_specs,
        "width": Option("int", 32, "channels of the first block (doubling per block)", min=1),
        "dropout": Option("float", 0.2, "dropout before the final linear layer", min=0, max=1, max_inclusive=False),
    }

    def build_model(self, image_size: int) -> torch.nn.Module:
        from torch import nn

        width = self.config["width"]
        layers: list[nn.Module] = []
        c_in, side = 3, image_size
        for i in range(4):
            c_out = width * 2**i
            # the first convolution has stride 2 from 48 px up: 4× cheaper, and lesion-scale
            # structure survives; every block then halves the map while it is ≥ 2 px
            stride = 2 if i == 0 and image_size >= 48 else 1
            layers += [
                nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            side = (side + stride - 1) // stride
            if side >= 2:
                layers.append(nn.MaxPool2d(2))
                side //= 2
            c_in = c_out
        layers += [
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(self.config["dropout"]),
            nn.Linear(c_in, 1),
        ]
        return nn.Sequential(*layers)


@dermabench.hookimpl
def register_classifiers(register):
    register(CNNClassifier)
