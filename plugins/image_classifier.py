"""The training loop shared by the built-in image classifiers (`cnn`, and later timm ViT, EfficientNet, ...).

A subclass only says which network to train::

    class MyClassifier(TorchImageClassifier):
        name = "my-net"
        description = "..."
        option_specs = {**TorchImageClassifier.option_specs, "lr": Option("float", 3e-4, min=0, min_inclusive=False)}

        def build_model(self, image_size: int) -> torch.nn.Module:
            return ...  # maps a float batch N×3×S×S (normalised with `mean`/`std`) to N×1 (or N×2) logits

Everything else is here, identical for every arm and seed:

* **Data.** Images are converted once to a uint8 tensor N×3×S×S (RGB, resized to
  `context.image_size` when needed); no PIL work per epoch.
* **Augmentation** on tensors, applied to real and synthetic images alike: random
  horizontal/vertical flips, 90° rotations and mild brightness/contrast jitter;
  optionally (`crop_scale` < 1) a random resized crop keeping between `crop_scale`
  and all of the image area (aspect 3/4-4/3), resized back to the input size. Off by
  default: lesion size is a diagnostic cue (the D of ABCD) that zoom crops blur.
* **Optimisation.** AdamW (no weight decay on biases and norm parameters), linear
  warm-up over the first `warmup` fraction of the steps, then cosine decay to zero.
  A subclass may split the parameters into groups with their own learning-rate
  scale (`parameter_groups`: e.g. a fresh head at 10× the pretrained backbone, or
  layer-wise decay) and keep parts of the network in eval mode while training
  (`train_mode`: e.g. frozen BatchNorm statistics for a linear probe).
* **Loss.** Binary cross-entropy on one logit (or cross-entropy on two), with
  optional label smoothing (`label_smoothing` = ε: targets ε/2 and 1 − ε/2).
* **Class balance.** Dermatology data is imbalanced (benign lesions dominate), so by
  default (`balance=loss`) each sample's loss is weighted by n / (2 · n_class): both
  classes contribute equally to the gradient. `balance=sampler` instead draws
  batches with replacement so that each class is drawn with probability 1/2 (loss
  unweighted); `balance=none` uses plain shuffling and an unweighted loss. The
  weights used are recorded in `class_weights_` / `sample_weights_`.
* **Training budget (fairness policy).** Training length is counted in
  optimisation steps of `batch_size` images and does **not** depend on the size of
  the training set. An "epoch" is a *nominal* epoch of `epoch_size` images
  (default 512), i.e. ceil(epoch_size / batch_size) steps; a fit runs
  `epochs` nominal epochs, or exactly `steps` steps when `steps` is given. With the
  same options every arm (`real`, `real+synthetic`, `synthetic`, ...) therefore
  takes the same number of steps and sees the same number of images, so an arm with
  more images cannot win merely by training longer; a bigger set gives more
  *variety*, not more updates. Batches are drawn from successive shuffled passes
  over the arm's own data, continuing across nominal epochs.
* **Model selection** on the validation set only: after every nominal epoch the
  model is scored by validation AUC (by validation loss if the validation set has
  one class; no selection if it is empty); the best state is kept and restored at
  the end. Training stops early after `patience` epochs without improvement
  (`patience=0` disables early stopping; the step budget is then an upper bound).
  `fit` receives only train and val, so test data cannot influence anything.
  The per-epoch record is in `history`; the chosen epoch in `best_epoch_`.
* **Determinism.** All randomness (initialisation, dropout, shuffling,
  augmentation) comes from seeds derived from `context.seed`; the global torch RNG
  of the host is left untouched (`torch.random.fork_rng`). The same seed gives
  bit-identical probabilities on the same machine and thread count.
* A non-finite loss raises `PluginError` naming the first such step (lower `lr`); it is checked at
  the end of each epoch, so that on CUDA the host does not wait for the GPU at every step.
* **Resume.** At the end of an epoch, when `checkpoint_minutes` passed since the last
  save, the whole training state (model, optimizer, schedule, best state, history,
  every RNG — the CPU's and, on CUDA, the training device's, which dropout and
  drop_path draw from there — and the rest of the current shuffled pass) is saved to
  `context.work_dir/fit-checkpoint.pt`, keyed by a hash of the data, settings and
  seed. A fit killed after that continues after the saved epoch and ends with the
  same weights as an uninterrupted one; the file goes once the fit is done.

Common options (strings from the command line are coerced): `epochs`, `epoch_size`,
`steps`, `batch_size`, `lr`, `weight_decay`, `warmup`, `patience`, `balance`,
`augment`, `crop_scale`, `label_smoothing`, `eval_batch_size`, `amp`, `checkpoint_minutes`.
See `TorchImageClassifier.option_specs`.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from PIL import Image

import dermabench
from dermabench.errors import PluginError
from dermabench.results import atomic_file
from dermabench.seeding import derive_seed

if TYPE_CHECKING:  # torch is imported lazily so that listing plugins stays fast
    import torch



# --------------------------------------------------------------------------- options


# `Option` and `parse_options` live in the core (`dermabench.options`); imported here by the
# built-in plugins that declared their options through this module first
from dermabench.options import Option, parse_options  # noqa: E402,F401


# --------------------------------------------------------------------------- tensors


def images_to_uint8(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """RGB uint8 tensor N×3×size×size; images not already size×size are resized (bilinear, antialiased)."""
    import torch

    array = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise PluginError(f"expected PIL images, got {type(image).__name__} at index {i}")
        if image.mode != "RGB":
            image = image.convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        array[i] = np.asarray(image)
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def on_device(x: torch.Tensor, device: str, share: float = 0.25) -> torch.Tensor:
    """`x` copied once to a CUDA device when it takes at most `share` of the device's free memory; else `x`.

    Why: a batch gathered on the host is copied from pageable memory every step, and a large such copy
    waits for the GPU to finish the step before it, so the host cannot queue the next step's kernels
    meanwhile. The plain loop a user writes moves the whole uint8 set once (6,875 images at 224 px are 1 GB).
    """
    import torch

    if not device.startswith("cuda"):
        return x
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return x.to(device) if x.nbytes <= share * free else x


def augment_batch(x: torch.Tensor, generator: torch.Generator, jitter: float = 0.1) -> torch.Tensor:
    """Random flips, 90° rotations and brightness/contrast jitter of a float batch in [0, 1] (N×3×S×S).

    Random numbers come from `generator` (on the CPU), so results do not depend on the device.
    """
    import torch

    n = x.shape[0]
    device = x.device
    flip_h = (torch.rand(n, generator=generator) < 0.5).to(device)
    flip_v = (torch.rand(n, generator=generator) < 0.5).to(device)
    turns = torch.randint(0, 4, (n,), generator=generator)
    brightness = 1.0 + (torch.rand(n, generator=generator) * 2 - 1) * jitter
    contrast = 1.0 + (torch.rand(n, generator=generator) * 2 - 1) * jitter
    x = torch.where(flip_h[:, None, None, None], x.flip(3), x)
    x = torch.where(flip_v[:, None, None, None], x.flip(2), x)
    if x.shape[2] == x.shape[3]:
        x = x.clone()
        for k in (1, 2, 3):
            sel = (turns == k).nonzero().flatten().to(device)
            if len(sel):
                x[sel] = torch.rot90(x[sel], k, dims=(2, 3))
    brightness = brightness.to(device, x.dtype)[:, None, None, None]
    contrast = contrast.to(device, x.dtype)[:, None, None, None]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (((x - mean) * contrast + mean) * brightness).clamp_(0.0, 1.0)


def random_resized_crop(x: torch.Tensor, generator: torch.Generator, min_scale: float,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Per-image random crop of area fraction in [min_scale, 1] and aspect ratio in `ratio`, resized
    back to the input size (bilinear), like torchvision's RandomResizedCrop but batched on tensors.

    Random numbers come from `generator` (on the CPU), so results do not depend on the device.
    """
    import torch
    import torch.nn.functional as F

    n = x.shape[0]
    area = min_scale + (1.0 - min_scale) * torch.rand(n, generator=generator, dtype=torch.float64)
    log_ratio = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(
        n, generator=generator, dtype=torch.float64)
    aspect = torch.exp(log_ratio)
    # crop width/height as fractions of the image side; clipped to the image
    w = torch.sqrt(area * aspect).clamp(max=1.0)
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    # centre, in the [-1, 1] coordinates of affine_grid, such that the crop stays inside
    cx = (1.0 - w) * (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1)
    cy = (1.0 - h) * (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2] = w, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count half); nan when only one class is present."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(np.asarray(scores, dtype=np.float64), return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse.reshape(-1)]  # average ranks, 1-based
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    return device


# --------------------------------------------------------------------------- batches and checkpoints

CHECKPOINT_FILE = "fit-checkpoint.pt"


class BatchIndices:
    """Index tensors of `batch_size`: successive shuffled passes, or class-balanced draws with replacement.

    Its state (the generator's and the unused rest of the current pass) goes into checkpoints, so a
    resumed fit sees exactly the batches an uninterrupted one would.
    """

    def __init__(self, n: int, batch_size: int, sample_weights, generator) -> None:
        import torch

        self.n, self.batch_size, self.weights, self.generator = n, batch_size, sample_weights, generator
        self.pool = torch.empty(0, dtype=torch.long)

    def __next__(self):
        import torch

        if self.weights is not None:
            return torch.multinomial(self.weights, self.batch_size, replacement=True, generator=self.generator)
        while len(self.pool) < self.batch_size:
            self.pool = torch.cat([self.pool, torch.randperm(self.n, generator=self.generator)])
        batch, self.pool = self.pool[: self.batch_size], self.pool[self.batch_size :]
        return batch

    def state(self) -> dict[str, Any]:
        return {"rng": self.generator.get_state(), "pool": self.pool.clone()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["rng"])
        self.pool = state["pool"]


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    import torch

    with atomic_file(path) as handle:  # a failed write (a full disk) leaves no half checkpoint behind
        torch.save(state, handle)


def _rng_states(device: str) -> dict[str, Any]:
    """The global torch RNG streams a training step may draw from, for a checkpoint: the CPU's and, training on
    CUDA, the training device's (dropout and drop_path on a GPU tensor draw from the CUDA generator)."""
    import torch

    states: dict[str, Any] = {"torch_rng": torch.get_rng_state()}
    if str(device).startswith("cuda"):
        states["cuda_rng"] = torch.cuda.get_rng_state(device)
    return states


def _set_rng_states(saved: dict[str, Any], device: str) -> None:
    """Restore what `_rng_states` saved. A checkpoint written before the CUDA stream was saved, or on a CPU,
    has no "cuda_rng": the device's stream is then left as the fit's seeding set it."""
    import torch

    torch.set_rng_state(saved["torch_rng"])
    if str(device).startswith("cuda") and saved.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(saved["cuda_rng"], device)


def _load_checkpoint(path: Path, fingerprint: Callable[[], str]) -> dict[str, Any] | None:
    """The checkpoint at `path` if it was made from the same data and settings (tensors only: weights_only)."""
    import torch

    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a damaged or foreign checkpoint is ignored and training starts over
        return None
    return state if isinstance(state, dict) and state.get("fingerprint") == fingerprint() else None


# --------------------------------------------------------------------------- the classifier


class TorchImageClassifier(dermabench.Classifier):
    """Base class: a torch image classifier trained by the shared loop (see the module docstring).

    Subclasses set `name`, `description`, optionally extend `option_specs` or change
    `mean`/`std`, and implement `build_model(image_size)`; the resolved options are
    in `self.config`.

    After `fit`: `model_`, `history` (one dict per nominal epoch: epoch, step,
    train_loss, val_auc, val_loss, lr, selected), `best_epoch_`, `best_step_`,
    `best_score_`, `selection_metric_` ("val_auc", "val_loss" or "none"),
    `steps_done_`, `stopped_early_`, `class_weights_`, `sample_weights_`,
    `fit_seconds_`, `train_images_per_s_`.
    """

    #: per-channel normalisation applied after augmentation (ImageNet statistics by default)
    mean: ClassVar[tuple[float, float, float]] = (0.485, 0.456, 0.406)
    std: ClassVar[tuple[float, float, float]] = (0.229, 0.224, 0.225)
    #: how strong the brightness/contrast jitter is (± this fraction)
    jitter: ClassVar[float] = 0.1
    #: run the model and its inputs in channels-last memory format (faster for convnets on CPU)
    channels_last: ClassVar[bool] = False

    option_specs: ClassVar[dict[str, Option]] = {
        "epochs": Option("int", 20, "nominal epochs of `epoch_size` images (validation after each)", min=1),
        "epoch_size": Option("int", 512, "images per nominal epoch, the same for every arm", min=1),
        "steps": Option("int", None, "exact optimisation-step budget; overrides epochs × epoch_size", min=1,
                        optional=True),
        "batch_size": Option("int", 64, "training batch size", min=1),
        "lr": Option("float", 2e-3, "peak AdamW learning rate", min=0, min_inclusive=False),
        "weight_decay": Option("float", 0.05, "AdamW weight decay (not on biases/norms)", min=0),
        "warmup": Option("float", 0.05, "fraction of the steps spent in linear warm-up", min=0, max=1,
                         max_inclusive=False),
        "patience": Option("int", 6, "nominal epochs without a better validation score before stopping; 0 = never",
                           min=0),
        "balance": Option("str", "loss", "class balance: loss weights, balanced sampler or none",
                          choices=("loss", "sampler", "none")),
        "augment": Option("bool", True, "flips, 90° rotations, brightness/contrast jitter during training"),
        "crop_scale": Option("float", 1.0, "random resized crop: smallest kept fraction of the image area "
                             "(1 = no crop; applied only with augment=true)", min=0, max=1, min_inclusive=False),
        "label_smoothing": Option("float", 0.0, "label smoothing ε: targets ε/2 and 1 − ε/2", min=0, max=1,
                                  max_inclusive=False),
        "eval_batch_size": Option("int", 256, "batch size for validation and prediction", min=1),
        "amp": Option("bool", True, "bfloat16 autocast on CUDA (ignored on other devices)"),
        "checkpoint_minutes": Option("float", 10.0, "save a resumable checkpoint at the end of an epoch when this "
                                     "many minutes passed since the last one (0 = every epoch)", min=0),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.config = parse_options(f"classifier '{self.name}'", options, self.option_specs)
        self.model_: torch.nn.Module | None = None
        self.history: list[dict[str, Any]] = []
        #: stop (raising InterruptedError) after this epoch's checkpoint; tests simulate a killed fit with it
        self.stop_after_epoch: int | None = None
        #: the epoch a fit resumed after (0: started from scratch)
        self.resumed_after_epoch_ = 0

    # -- for subclasses -------------------------------------------------------

    def build_model(self, image_size: int) -> torch.nn.Module:
        """A fresh network mapping N×3×S×S normalised floats to N×1 (or N×2) logits."""
        raise NotImplementedError

    def parameter_groups(self, model: torch.nn.Module) -> list[dict[str, Any]]:
        """AdamW parameter groups: dicts with `params`, `weight_decay` and optionally `lr_scale`
        (the group's learning rate is `lr` × `lr_scale`; default 1).

        Default: every trainable parameter at `lr`; weight decay on weights, none on
        biases and norm parameters (ndim ≤ 1).
        """
        decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
        return [{"params": decay, "weight_decay": self.config["weight_decay"]},
                {"params": no_decay, "weight_decay": 0.0}]

    def train_mode(self, model: torch.nn.Module) -> None:
        """Put the model in training mode before each nominal epoch (override to keep parts in eval mode)."""
        model.train()

    # -- budget ------------------------------------------------------------------

    def steps_per_epoch(self) -> int:
        return math.ceil(self.config["epoch_size"] / self.config["batch_size"])

    def total_steps(self) -> int:
        """The step budget of one fit: `steps`, else epochs × ceil(epoch_size / batch_size). Same for every arm."""
        if self.config["steps"] is not None:
            return int(self.config["steps"])
        return self.config["epochs"] * self.steps_per_epoch()

    # -- fit ---------------------------------------------------------------------

    def fit(self, train: Sequence[dermabench.Sample], val: Sequence[dermabench.Sample],
            context: dermabench.RunContext) -> None:
        import torch

        cfg = self.config
        who = f"classifier '{self.name}'"
        size = int(context.image_size)
        if not train:
            raise PluginError(f"{who}: the training set is empty")
        y_train = np.array([int(s.label) for s in train])
        if not np.isin(y_train, (0, 1)).all():
            raise PluginError(f"{who}: labels must be 0 (benign) or 1 (malignant)")
        counts = np.bincount(y_train, minlength=2)
        if counts.min() == 0:
            missing = "benign" if counts[0] == 0 else "malignant"
            raise PluginError(f"{who}: the training set has no {missing} images ({len(train)} images)")
        device = resolve_device(context.device)

        x_train = images_to_uint8([s.image for s in train], size)
        x_val = images_to_uint8([s.image for s in val], size)
        y_val = np.array([int(s.label) for s in val], dtype=np.int64)
        labels = torch.from_numpy(y_train.astype(np.int64))

        n = len(train)
        # class balance: weights n / (2 n_c) make both classes contribute equally
        class_w = n / (2.0 * counts)
        self.class_weights_ = {0: 1.0, 1: 1.0}
        self.sample_weights_ = None
        if cfg["balance"] == "loss":
            self.class_weights_ = {0: float(class_w[0]), 1: float(class_w[1])}
        elif cfg["balance"] == "sampler":
            self.sample_weights_ = torch.from_numpy((1.0 / (2.0 * counts))[y_train]).double()
        loss_w = torch.tensor([self.class_weights_[0], self.class_weights_[1]], dtype=torch.float32, device=device)

        total = self.total_steps()
        per_epoch = self.steps_per_epoch() if cfg["steps"] is None else min(self.steps_per_epoch(), total)
        n_epochs = math.ceil(total / per_epoch)
        warmup = int(round(cfg["warmup"] * total))

        if len(val) and len(set(y_val.tolist())) == 2:
            self.selection_metric_ = "val_auc"
        elif len(val):
            self.selection_metric_ = "val_loss"
        else:
            self.selection_metric_ = "none"

        devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
        start = time.perf_counter()
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(derive_seed(context.seed, "classifier", self.name, "init"))
            data_gen = torch.Generator().manual_seed(derive_seed(context.seed, "classifier", self.name, "data"))
            aug_gen = torch.Generator().manual_seed(derive_seed(context.seed, "classifier", self.name, "augment"))
            model = self.build_model(size).to(device)
            if self.channels_last:
                model = model.to(memory_format=torch.channels_last)
            # after the model, so that its weights are counted out of the free memory
            x_train_on, x_val_on, labels_on = (on_device(t, device) for t in (x_train, x_val, labels))
            groups = []
            for group in self.parameter_groups(model):
                group = dict(group)
                group["lr"] = cfg["lr"] * float(group.pop("lr_scale", 1.0))
                if group["params"]:
                    groups.append(group)
            if not groups:
                raise PluginError(f"{who}: the model has no trainable parameters")
            optimizer = torch.optim.AdamW(groups, lr=cfg["lr"])

            def lr_factor(step: int) -> float:
                if step < warmup:
                    return (step + 1) / (warmup + 1)
                progress = (step - warmup) / max(1, total - warmup)
                return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
            batches = BatchIndices(n, cfg["batch_size"], self.sample_weights_, data_gen)
            mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)

            self.history = []
            best_score, best_state = -math.inf, None
            self.best_epoch_, self.best_step_, self.best_score_ = 0, 0, float("nan")
            self.stopped_early_ = False
            stale, step, first_epoch = 0, 0, 1
            checkpoint = Path(context.work_dir) / CHECKPOINT_FILE
            # hashing the data costs 0.1–0.25 s per 1,000 images at 224 px (a GPU epoch of the small cnn is
            # 0.3 s), and only a checkpoint to resume or to save needs it
            fingerprint = functools.cache(lambda: self._fingerprint(x_train, labels, x_val, y_val, context))
            saved = _load_checkpoint(checkpoint, fingerprint)
            if saved is not None:  # a killed fit of the same data and settings: continue after its last epoch
                model.load_state_dict(saved["model"])
                optimizer.load_state_dict(saved["optimizer"])
                scheduler.load_state_dict(saved["scheduler"])
                batches.load_state(saved["batches"])
                aug_gen.set_state(saved["augment_rng"])
                _set_rng_states(saved, device)
                best_state, best_score, stale, step = saved["best_state"], saved["best_score"], saved["stale"], saved["step"]
                self.best_epoch_, self.best_step_, self.best_score_ = saved["best_epoch"], saved["best_step"], saved["best_score_"]
                self.history = list(saved["history"])
                first_epoch = saved["epoch"] + 1
                context.progress.log(f"{who}: resuming training after epoch {saved['epoch']} ({checkpoint})")
            self.resumed_after_epoch_ = first_epoch - 1
            last_save = time.monotonic()
            epochs = range(first_epoch, n_epochs + 1)
            for epoch in context.progress.track(epochs, f"training {self.name}", total=len(epochs)):
                self.train_mode(model)
                losses = []
                for _ in range(min(per_epoch, total - step)):
                    idx = next(batches)
                    x = x_train_on[idx.to(x_train_on.device)].to(device, non_blocking=True).float().div_(255.0)
                    if cfg["augment"]:
                        x = augment_batch(x, aug_gen, self.jitter)
                        if cfg["crop_scale"] < 1.0:
                            x = random_resized_crop(x, aug_gen, cfg["crop_scale"])
                    x = self._prepare(x, mean, std)
                    y = labels_on[idx.to(labels_on.device)].to(device, non_blocking=True)
                    with self._autocast(device):
                        logits = model(x)
                    loss = self._loss(logits, y, loss_w, cfg["label_smoothing"])
                    step += 1
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    losses.append(loss.detach())
                train_loss = self._epoch_loss(losses, step, total, epoch)
                record: dict[str, Any] = {"epoch": epoch, "step": step, "train_loss": train_loss,
                                          "lr": cfg["lr"] * lr_factor(step),
                                          "val_auc": float("nan"), "val_loss": float("nan"), "selected": False}
                if self.selection_metric_ == "none":
                    score = float(step)  # no validation: keep the last state
                else:
                    p_val = self._predict_tensor(model, x_val_on, device, mean, std)
                    record["val_auc"] = roc_auc(y_val, p_val)
                    eps = 1e-7
                    pc = np.clip(p_val, eps, 1 - eps)
                    record["val_loss"] = float(-np.mean(y_val * np.log(pc) + (1 - y_val) * np.log(1 - pc)))
                    score = record["val_auc"] if self.selection_metric_ == "val_auc" else -record["val_loss"]
                    if not math.isfinite(score):
                        score = -math.inf
                if score > best_score or best_state is None:
                    best_score = score
                    best_state = copy.deepcopy(model.state_dict())
                    self.best_epoch_, self.best_step_ = epoch, step
                    self.best_score_ = score if self.selection_metric_ != "val_loss" else -score
                    record["selected"] = True
                    stale = 0
                else:
                    stale += 1
                self.history.append(record)
                if cfg["patience"] and stale >= cfg["patience"] and step < total:
                    self.stopped_early_ = True
                    break
                if epoch < n_epochs and time.monotonic() - last_save >= 60 * cfg["checkpoint_minutes"]:
                    _save_checkpoint(checkpoint, {
                        "fingerprint": fingerprint(), "epoch": epoch, "step": step, "stale": stale,
                        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "batches": batches.state(),
                        "augment_rng": aug_gen.get_state(), **_rng_states(device),
                        "best_state": best_state, "best_score": best_score, "best_epoch": self.best_epoch_,
                        "best_step": self.best_step_, "best_score_": self.best_score_, "history": self.history,
                    })  # fmt: skip
                    last_save = time.monotonic()
                    if self.stop_after_epoch == epoch:
                        raise InterruptedError(f"{who}: stopped after epoch {epoch} (stop_after_epoch)")
            model.load_state_dict(best_state)
            checkpoint.unlink(missing_ok=True)
            model.eval()
        for record in self.history:
            record["selected"] = record["epoch"] == self.best_epoch_
        self.model_ = model
        self.steps_done_ = step
        self.fit_seconds_ = time.perf_counter() - start
        self.train_images_per_s_ = step * cfg["batch_size"] / self.fit_seconds_ if self.fit_seconds_ > 0 else 0.0
        if self.selection_metric_ == "none":
            self.best_score_ = float("nan")

    def _epoch_loss(self, losses: list, step: int, total: int, epoch: int) -> float:
        """The epoch's mean training loss; a PluginError naming the first step whose loss was not finite.

        Checked once an epoch rather than once a step: reading a CUDA loss on the host waits for the GPU,
        and a wait each step keeps the CPU from queueing the next step's work while the GPU runs this one.
        """
        import torch

        if not losses:
            return float("nan")
        stacked = torch.stack(losses).float()
        finite = torch.isfinite(stacked)
        if not bool(finite.all()):
            first = int((~finite).nonzero()[0, 0])
            at = step - len(losses) + first + 1
            raise PluginError(
                f"classifier '{self.name}': the training loss became {stacked[first].item()} at step {at} of {total} "
                f"(epoch {epoch}); lower the learning rate (lr={self.config['lr']:g})"
            )
        return float(stacked.mean())

    def _fingerprint(self, x_train, labels, x_val, y_val, context: dermabench.RunContext) -> str:
        """What a checkpoint must have been made from to be resumed: the data, the settings, the seed."""
        digest = hashlib.sha256()
        for array in (x_train.numpy(), labels.numpy(), x_val.numpy(), y_val):
            digest.update(memoryview(np.ascontiguousarray(array)).cast("B"))  # the bytes, without a copy
        settings = {k: v for k, v in self.config.items() if k != "checkpoint_minutes"}
        digest.update(json.dumps([self.name, type(self).__name__, settings, context.seed], default=str).encode())
        return digest.hexdigest()

    def _autocast(self, device: str):
        import torch

        enabled = bool(self.config["amp"]) and device.startswith("cuda")
        return torch.autocast(device_type="cuda" if enabled else "cpu", dtype=torch.bfloat16, enabled=enabled)

    def _prepare(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        import torch

        x = (x - mean) / std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @staticmethod
    def _loss(logits: torch.Tensor, y: torch.Tensor, class_weights: torch.Tensor,
              label_smoothing: float = 0.0) -> torch.Tensor:
        import torch.nn.functional as F

        if logits.ndim == 2 and logits.shape[1] == 2:
            per_sample = F.cross_entropy(logits.float(), y, reduction="none", label_smoothing=label_smoothing)
        else:
            target = y.float()
            if label_smoothing:
                target = target * (1.0 - label_smoothing) + 0.5 * label_smoothing
            per_sample = F.binary_cross_entropy_with_logits(logits.float().reshape(-1), target, reduction="none")
        return (per_sample * class_weights[y]).mean()

    def _predict_tensor(self, model, x_uint8, device, mean, std) -> np.ndarray:
        import torch

        model.eval()
        out = []
        bs = self.config["eval_batch_size"]
        with torch.inference_mode():
            for i in range(0, len(x_uint8), bs):
                x = x_uint8[i:i + bs].to(device).float().div_(255.0)
                with self._autocast(device):
                    logits = model(self._prepare(x, mean, std))
                logits = logits.float()
                if logits.ndim == 2 and logits.shape[1] == 2:
                    p = torch.softmax(logits, dim=1)[:, 1]
                else:
                    p = torch.sigmoid(logits.reshape(-1))
                out.append(p.cpu().double())
        return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float64)

    # -- predict -----------------------------------------------------------------

    def predict_proba(self, images: Sequence[Image.Image], context: dermabench.RunContext) -> np.ndarray:
        import torch

        if self.model_ is None:
            raise PluginError(f"classifier '{self.name}': predict_proba called before fit")
        device = resolve_device(context.device)
        self.model_.to(device)
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        p = self._predict_tensor(self.model_, images_to_uint8(list(images), int(context.image_size)), device,
                                 mean, std)
        if not np.isfinite(p).all():
            raise PluginError(f"classifier '{self.name}': the model produced non-finite probabilities")
        return np.clip(p.astype(np.float64), 0.0, 1.0)
