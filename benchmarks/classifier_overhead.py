"""Classifier training: one nominal epoch of `cnn`, `efficientnet`, `vit` (tiny) through dermabench vs a plain loop.

dermabench's side is `Classifier.fit(train, val)` with `epochs=1`: uint8 tensors made
once, flips/90° turns/jitter on tensors, AdamW with warm-up + cosine, class-weighted
loss, a validation pass scored by AUC for model selection, seeded RNG streams. The
plain side is the loop a researcher would write with timm: the same network
(`build_model`: the timm model and weights the plugin uses), the same number of
steps and batch size, flips on tensors, AdamW + cosine, BCE, then one validation
pass and its AUC. Both start from the same PIL images, so both pay the
image-to-tensor conversion; both run on the CPU with the same thread count.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.measure import Figure, ratio_figure, time_pair
from dermabench import plugins
from dermabench.api import RunContext

CLASSIFIERS = ("cnn", "efficientnet", "vit")


def plain_epoch(clf, train, val, size: int, device: str = "cpu") -> float:
    """One epoch of the loop a user would write (bf16 autocast on CUDA, as the plugins); returns the validation AUC."""
    from sklearn.metrics import roc_auc_score

    cfg = clf.config
    to_tensor = lambda samples: torch.from_numpy(  # noqa: E731
        np.stack([np.asarray(s.image.convert("RGB").resize((size, size))) for s in samples])
    ).permute(0, 3, 1, 2).contiguous()
    x_train, x_val = to_tensor(train), to_tensor(val)
    y_train = torch.tensor([s.label for s in train], dtype=torch.float32)
    torch.manual_seed(0)
    model = clf.build_model(size).to(device)
    x_train, x_val, y_train = x_train.to(device), x_val.to(device), y_train.to(device)
    cuda = device.startswith("cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"])
    steps = math.ceil(cfg["epoch_size"] / cfg["batch_size"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    mean = torch.tensor(clf.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(clf.std, device=device).view(1, 3, 1, 1)
    model.train()
    order = torch.randperm(len(train))
    for step in range(steps):
        idx = order[(torch.arange(cfg["batch_size"]) + step * cfg["batch_size"]) % len(train)].to(device)
        x = x_train[idx].float() / 255
        if step % 2:
            x = x.flip(3)
        with torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda):
            logits = model((x - mean) / std)
        loss = F.binary_cross_entropy_with_logits(logits[:, -1].float(), y_train[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    model.eval()
    with torch.inference_mode(), torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda):
        scores = torch.cat([
            model((x_val[i : i + 256].float() / 255 - mean) / std)[:, -1].float() for i in range(0, len(val), 256)
        ])
    return float(roc_auc_score([s.label for s in val], scores.cpu().numpy()))


def run(n_train: int, n_val: int, repeats: int, image_size: int = 64, epoch_size: int = 512,
        device: str = "cpu", group: str = "overhead", classifiers: tuple[str, ...] = CLASSIFIERS,
        options: dict[str, dict] | None = None) -> list[Figure]:
    """`options`: per classifier name, plugin options for both sides (e.g. the ViT variant)."""
    from dermabench_plugins.phantom import PhantomDataset

    options = options or {}
    samples = list(PhantomDataset(n=n_train + n_val, size=image_size).samples())
    train, val = samples[:n_train], samples[n_train:]
    figures = []
    for name in classifiers:
        make = plugins.get("classifier", name).cls
        with tempfile.TemporaryDirectory() as tmp:
            context = RunContext(device=device, image_size=image_size, work_dir=Path(tmp), profile="quick")
            def ours():
                clf = make(epochs=1, patience=0, epoch_size=epoch_size, **options.get(name, {}))
                clf.fit(train, val, context)

            def direct():
                clf = make(epochs=1, patience=0, epoch_size=epoch_size, **options.get(name, {}))
                if hasattr(clf, "resolve"):
                    clf.resolve(context)
                plain_epoch(clf, train, val, image_size, device)

            ours_t, direct_t = time_pair(ours, direct, repeats)
        figures.append(ratio_figure(
            group,
            f"classifier, one epoch of {name} on {device} ({epoch_size} of {n_train} train images, {n_val} val, "
            f"{image_size} px)",
            ours_t, direct_t,
        ))
    return figures
