"""The fine-tuning loop shared by the diffusion generators (`dermaflux` and `sd15`/`sdxl`).

What differs between a rectified-flow MMDiT (FLUX) and a DDPM UNet (Stable
Diffusion) is three things, and they are the seams here:

* the **model** — a `Denoiser`: which module trains, which of its parameters,
  how to call it on (noisy latents, model time, cached conditioning);
* the **noise schedule and loss target** — an `Objective`:
  `noisy_input(x0, noise, t)`, `target(x0, noise, t)`, `model_time(t)`,
  `loss_weight(t)`; `RectifiedFlow` (x_t = (1−t)·x0 + t·ε, target ε − x0) and
  `DDPMObjective` (x_t = √ᾱ·x0 + √(1−ᾱ)·ε, target ε or v from the scheduler
  config, optional min-SNR-γ weighting) are provided;
* the **timestep sampler** — a `TimestepSampler` giving t ∈ [0, 1]
  (logit-normal, mode, uniform, … via diffusers'
  `compute_density_for_timestep_sampling`).

Everything else is here, once: cached latents and conditioning tensors (computed
once by the caller), random flips (exact flips / quarter turns of the tiny models'
block-DCT latents through a hook, or VAE-encoded flipped copies of the images for
a learned VAE, whose latents do not flip with the image: see `TrainingSet`), AdamW (no weight
decay on biases and norms), linear warm-up then constant or cosine learning rate,
gradient accumulation, gradient clipping, optional EMA of the trained weights,
bf16 autocast on CUDA, `accelerate.Accelerator` (one CPU process here; DDP over
GPUs/nodes with `accelerate launch`), and checkpoints every N steps with resume.

Determinism and resume. Every random draw of optimisation step `s` (which
samples, flips, timesteps, noise) comes from a generator seeded by
`derive_seed(seed, "train-step", s, process_index)`, never from a running RNG.
A checkpoint therefore needs only the trained weights, the EMA, the optimizer
state and the step: a run killed after the checkpoint at step s and resumed
continues at step s + 1 and ends with the same weights as an uninterrupted run
(up to float non-associativity across machines). Checkpoints are safetensors
(tensors) + JSON (step, loss history, hyper-parameters); nothing is pickled.
A checkpoint folder is written under a temporary name and renamed when
complete, so a kill mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from dermabench.errors import PluginError
from dermabench.seeding import derive_seed

__all__ = [
    "DDPMObjective",
    "Denoiser",
    "Objective",
    "RectifiedFlow",
    "TimestepSampler",
    "TrainConfig",
    "TrainResult",
    "TrainingSet",
    "dihedral_augment",
    "latest_checkpoint",
    "train",
]

TIMESTEP_SCHEMES = ("logit_normal", "mode", "uniform", "sigma_sqrt", "cosmap")


# --------------------------------------------------------------------------- timesteps and objectives


@dataclass(frozen=True)
class TimestepSampler:
    """Draws training times t ∈ [0, 1] (0 = data, 1 = noise).

    scheme: "logit_normal" (SD3/FLUX: sigmoid of N(logit_mean, logit_std)), "mode"
    (mode_scale), "uniform"; "sigma_sqrt" and "cosmap" draw uniformly and weight the
    loss instead (SD3 paper), see `loss_weight`. `shift` > 1 moves mass towards noise
    like FLUX's resolution-dependent shift: t ← shift·t / (1 + (shift − 1)·t).
    """

    scheme: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    shift: float = 1.0

    def __post_init__(self) -> None:
        if self.scheme not in TIMESTEP_SCHEMES:
            raise ValueError(f"timestep scheme must be one of {', '.join(TIMESTEP_SCHEMES)}, got {self.scheme!r}")

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        from diffusers.training_utils import compute_density_for_timestep_sampling

        scheme = self.scheme if self.scheme in ("logit_normal", "mode") else "uniform"
        t = compute_density_for_timestep_sampling(
            scheme, n, self.logit_mean, self.logit_std, self.mode_scale, device="cpu", generator=generator
        )
        if self.shift != 1.0:
            t = self.shift * t / (1 + (self.shift - 1) * t)
        return t.clamp(1e-5, 1.0 - 1e-5)

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        return compute_loss_weighting_for_sd3(self.scheme, t)


class Objective(ABC):
    """Noise schedule + loss target of a diffusion model family. t ∈ [0, 1] is the sampler's time."""

    sampler: TimestepSampler

    @abstractmethod
    def noisy_input(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """What the network is given as its timestep."""
        return t

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        return self.sampler.loss_weight(t)

    def describe(self) -> dict[str, Any]:
        return {"objective": type(self).__name__, "sampler": asdict(self.sampler)}


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


class RectifiedFlow(Objective):
    """Rectified flow / flow matching (SD3, FLUX): x_t = (1 − t)·x0 + t·ε, the model predicts ε − x0.

    The FLUX transformer takes t ∈ [0, 1] (it multiplies by 1000 itself), so model_time is t.
    """

    def __init__(self, sampler: TimestepSampler | None = None) -> None:
        self.sampler = sampler or TimestepSampler()

    def noisy_input(self, x0, noise, t):
        s = _bcast(t, x0)
        return (1.0 - s) * x0 + s * noise

    def target(self, x0, noise, t):
        return noise - x0


class DDPMObjective(Objective):
    """DDPM / Stable Diffusion: x_t = √ᾱ_k·x0 + √(1 − ᾱ_k)·ε at the discrete step k = ⌊t·K⌋.

    prediction_type "epsilon" (target ε) or "v_prediction" (target √ᾱ·ε − √(1 − ᾱ)·x0).
    `alphas_cumprod` comes from the model's scheduler; `from_scheduler` reads both from a
    scheduler (config), as SD 1.5 (epsilon) and SD 2.1-v (v_prediction) declare them.
    model_time is the integer step k the UNet expects. Use `TimestepSampler("uniform")`
    for the classic recipe.

    snr_gamma: min-SNR-γ loss weighting (Hang et al. 2023, γ = 5 in the paper): each sample's
    loss is weighted by min(SNR, γ)/SNR (epsilon) or min(SNR, γ)/(SNR + 1) (v), SNR = ᾱ/(1 − ᾱ),
    so the easy low-noise steps stop dominating. None = unweighted (the standard loss).
    """

    def __init__(
        self,
        alphas_cumprod: torch.Tensor,
        prediction_type: str = "epsilon",
        sampler: TimestepSampler | None = None,
        snr_gamma: float | None = None,
    ) -> None:
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be epsilon or v_prediction, got {prediction_type!r}")
        if snr_gamma is not None and snr_gamma <= 0:
            raise ValueError(f"snr_gamma must be > 0, got {snr_gamma}")
        self.alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.prediction_type = prediction_type
        self.sampler = sampler or TimestepSampler("uniform")
        self.snr_gamma = snr_gamma

    @classmethod
    def from_scheduler(
        cls, scheduler: Any, snr_gamma: float | None = None, sampler: TimestepSampler | None = None
    ) -> DDPMObjective:
        """The objective a model's scheduler (or its config) declares: its betas and prediction type."""
        from diffusers import DDPMScheduler

        config = getattr(scheduler, "config", scheduler)
        ddpm = DDPMScheduler.from_config(config)  # any DDPM-family scheduler config: same betas, same K
        return cls(ddpm.alphas_cumprod, ddpm.config.prediction_type, sampler, snr_gamma)

    def _k(self, t: torch.Tensor) -> torch.Tensor:
        n = len(self.alphas_cumprod)
        return (t.double() * n).long().clamp(0, n - 1)

    def _ab(self, t, like):
        return _bcast(self.alphas_cumprod[self._k(t).cpu()], like)

    def noisy_input(self, x0, noise, t):
        ab = self._ab(t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def target(self, x0, noise, t):
        if self.prediction_type == "epsilon":
            return noise
        ab = self._ab(t, x0)
        return ab.sqrt() * noise - (1 - ab).sqrt() * x0

    def model_time(self, t):
        return self._k(t)

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        ab = self.alphas_cumprod[self._k(t).cpu()]
        return (ab / (1 - ab)).float()

    def loss_weight(self, t):
        if self.snr_gamma is None:
            return torch.ones_like(t)
        snr = self.snr(t)
        clipped = snr.clamp(max=self.snr_gamma)
        return (clipped / snr if self.prediction_type == "epsilon" else clipped / (snr + 1)).to(t.dtype)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "prediction_type": self.prediction_type, "steps": len(self.alphas_cumprod),
                "snr_gamma": self.snr_gamma}


# --------------------------------------------------------------------------- the model seam


class Denoiser(ABC):
    """The model-specific half of training. `module` is what trains (and what `accelerate` wraps)."""

    module: torch.nn.Module

    @abstractmethod
    def predict(
        self, module: torch.nn.Module, x_t: torch.Tensor, model_time: torch.Tensor, cond: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """The network's output for noisy latents x_t (same layout as the cached latents)."""

    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.module.named_parameters() if p.requires_grad}

    def no_decay(self, name: str, param: torch.nn.Parameter) -> bool:
        """Parameters without weight decay: biases, norms, embeddings-like 1-d tensors."""
        return param.ndim < 2 or "norm" in name


@dataclass
class TrainingSet:
    """Cached training tensors: latents (N, ...) and conditioning tensors whose first dim is N.

    Flips (`TrainConfig.flip`) come from one of two places, never from transforming a learned VAE's latents
    (FLUX's 16-channel, SD's 4-channel conv VAE: a flipped or turned latent is not the latent of the flipped
    image, and the model would learn to denoise latents its VAE never makes):

    * `augment`: a function that flips/turns a latent batch *exactly as the images*. Only a latent space
      where this is exact may use it: the tiny models' block-DCT latents (`flux_tiny.DCTVAE.augment` goes
      through pixels; exact, as the kept frequencies are closed under flips and quarter turns — tested);
    * `variants`: latents of transformed images, encoded by the VAE itself (N, V, ...): e.g. V = 1, the
      horizontally flipped image, as kohya's ``flip_aug`` caches it. Each drawn sample then takes its own
      latent or one of its variants, uniformly. Costs V more encodes and V× the latents' memory.

    With neither, `flip` does nothing. `dihedral_augment` may still be passed as `augment` by a caller whose
    latents do flip with the image.
    """

    latents: torch.Tensor
    #: conditioning tensors: one row per latent, or one per `conditioning_index` value
    conditioning: dict[str, torch.Tensor] = field(default_factory=dict)
    #: per-sample conditioning used when a caption is dropped (classifier-free guidance training)
    null_conditioning: dict[str, torch.Tensor] | None = None
    #: random flips/turns of a latent batch that are exact for this latent space (see above)
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    #: (N, V, ...) latents of V transformed copies of each image, encoded by the VAE (see above)
    variants: torch.Tensor | None = None
    #: (N,) row of `conditioning` for each latent: a caption shared by many images is stored once (FLUX's T5
    #: output is 512 × 4096 per caption, 4 MiB in bf16); None = row i is latent i's
    conditioning_index: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = len(self.latents)
        if self.conditioning_index is not None:
            index = self.conditioning_index
            if index.ndim != 1 or len(index) != n:
                raise ValueError(f"conditioning_index has shape {tuple(index.shape)} for {n} latents")
            rows = int(index.max()) + 1 if n else 0
            for key, value in self.conditioning.items():
                if len(value) < rows:
                    raise ValueError(f"conditioning '{key}' has {len(value)} rows; the index needs {rows}")
        else:
            for key, value in self.conditioning.items():
                if len(value) != n:
                    raise ValueError(f"conditioning '{key}' has {len(value)} rows for {n} latents")
        if self.variants is not None:
            if len(self.variants) != n or self.variants.shape[2:] != self.latents.shape[1:]:
                raise ValueError(
                    f"variants have shape {tuple(self.variants.shape)} for latents {tuple(self.latents.shape)}; "
                    "expected (N, V, *latent shape)"
                )
            if self.augment is not None:
                raise ValueError("give augment or variants, not both")

    def __len__(self) -> int:
        return len(self.latents)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000  # optimisation steps
    batch_size: int = 4  # per process and micro-step
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # or "cosine" (to lr_min_ratio · lr at the last step)
    lr_min_ratio: float = 0.0
    max_grad_norm: float = 1.0
    betas: tuple[float, float] = (0.9, 0.999)
    ema_decay: float = 0.0  # 0 = no EMA
    flip: bool = True  # random flips: `TrainingSet.augment` or `TrainingSet.variants` (nothing without either)
    caption_dropout: float = 0.0
    checkpoint_every: int = 500  # 0 = never
    keep_checkpoints: int = 2
    seed: int = 0
    mixed_precision: str = "auto"  # "auto": bf16 autocast on CUDA, none elsewhere; or "no", "bf16"
    #: stop after this optimisation step (tests: simulate a killed run); None = run to `steps`
    stop_after: int | None = None

    def fingerprint(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("checkpoint_every", "keep_checkpoints", "stop_after", "mixed_precision"):
            data.pop(key)
        return data


@dataclass
class TrainResult:
    step: int
    losses: list[float]
    resumed_from: int | None
    seconds: float
    finished: bool


# --------------------------------------------------------------------------- checkpoints


def _checkpoints(folder: Path) -> list[tuple[int, Path]]:
    found = []
    if folder.is_dir():
        for path in folder.iterdir():
            if path.is_dir() and path.name.startswith("checkpoint-") and (path / "state.json").is_file():
                try:
                    found.append((int(path.name.split("-", 1)[1]), path))
                except ValueError:
                    continue
    return sorted(found)


def latest_checkpoint(folder: str | os.PathLike[str]) -> tuple[int, Path] | None:
    """(step, path) of the newest complete checkpoint in `folder`, or None."""
    found = _checkpoints(Path(folder))
    return found[-1] if found else None


def _save_tensors(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise PluginError(
            f"checkpoint file {path} is not a readable safetensors file ({exc}); remove {path.parent} to start over"
        ) from exc


def _optimizer_tensors(optimizer: torch.optim.Optimizer, names: list[str]) -> tuple[dict[str, torch.Tensor], dict]:
    """The optimizer state as named tensors (safetensors) + JSON-able param groups."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"{names[index]}::{key}"] = torch.as_tensor(value)
    groups = [{k: v for k, v in g.items() if k != "params"} | {"params": list(g["params"])} for g in state["param_groups"]]
    return tensors, {"param_groups": groups}


def _load_optimizer(optimizer: torch.optim.Optimizer, names: list[str], tensors, meta) -> None:
    index_of = {name: i for i, name in enumerate(names)}
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name, _, slot = key.rpartition("::")
        if name not in index_of:
            raise PluginError(f"checkpoint optimizer state names an unknown parameter '{name}'")
        state.setdefault(index_of[name], {})[slot] = value
    groups = [dict(g) for g in meta["param_groups"]]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# --------------------------------------------------------------------------- the loop


def _jsonable(data: Any) -> Any:
    return json.loads(json.dumps(data))


def _lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimisation step `step` (1-based)."""
    if cfg.warmup_steps and step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    if cfg.lr_schedule == "cosine":
        span = max(1, cfg.steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        floor = cfg.lr * cfg.lr_min_ratio
        return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr


def dihedral_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal/vertical flips and quarter turns of B×C×H×W latents (dermoscopy has no up)."""
    n = x.shape[0]
    flip_h = torch.rand(n, generator=generator) < 0.5
    flip_v = torch.rand(n, generator=generator) < 0.5
    turns = torch.randint(0, 4, (n,), generator=generator)
    out = torch.where(flip_h.to(x.device)[:, None, None, None], x.flip(3), x)
    out = torch.where(flip_v.to(x.device)[:, None, None, None], out.flip(2), out)
    if x.shape[2] == x.shape[3]:
        out = out.clone()
        for k in (1, 2, 3):
            sel = (turns == k).nonzero().flatten().to(x.device)
            if len(sel):
                out[sel] = torch.rot90(out[sel], k, dims=(2, 3))
    return out


def train(
    denoiser: Denoiser,
    data: TrainingSet,
    objective: Objective,
    cfg: TrainConfig,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    progress: Any = None,
    on_checkpoint: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train `denoiser.module` on `data` with `objective`; resume from `checkpoint_dir` if it holds a checkpoint.

    Returns after `cfg.steps` optimisation steps (or `cfg.stop_after`). When an EMA is
    kept, the EMA weights are copied into the module at the end.
    """
    from accelerate import Accelerator

    if len(data) == 0:
        raise PluginError("nothing to train on: the training set is empty")
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.grad_accum < 1:
        raise PluginError(f"bad training config: {cfg}")
    on_cuda = str(device).startswith("cuda")
    precision = cfg.mixed_precision
    if precision == "auto":
        precision = "bf16" if on_cuda and torch.cuda.is_bf16_supported() else "no"
    if precision not in ("no", "bf16"):
        raise PluginError(f"mixed_precision must be auto, no or bf16, got {cfg.mixed_precision!r}")
    # the autocast is ours, not accelerate's: its mixed precision is one setting per process (a tiny fp32 fit
    # and a full-size bf16 fit in one run would collide), and it rewrites the module's forward
    accelerator = Accelerator(cpu=not on_cuda and str(device) != "mps")
    start_time = time.perf_counter()

    params = denoiser.trainable_parameters()
    if not params:
        raise PluginError("the denoiser has no trainable parameters")
    names = list(params)
    decay = [params[n] for n in names if not denoiser.no_decay(n, params[n])]
    no_decay = [params[n] for n in names if denoiser.no_decay(n, params[n])]
    # parameter order for the optimizer state: decay group first, then no-decay (as passed below)
    ordered = [n for n in names if not denoiser.no_decay(n, params[n])] + [
        n for n in names if denoiser.no_decay(n, params[n])
    ]
    groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
    ema: dict[str, torch.Tensor] | None = (
        {n: p.detach().clone().float() for n, p in params.items()} if cfg.ema_decay > 0 else None
    )

    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    start, losses, resumed_from = 0, [], None
    if ckpt_dir is not None:
        found = latest_checkpoint(ckpt_dir)
        if found is not None:
            step, path = found
            state = json.loads((path / "state.json").read_text())
            same = _jsonable(cfg.fingerprint()), _jsonable(objective.describe())
            if (state.get("fingerprint"), state.get("objective")) != same:
                raise PluginError(
                    f"checkpoint {path} was made with other training settings; remove {ckpt_dir} to start over"
                )
            weights = _load_tensors(path / "trainable.safetensors")
            missing = set(names) - set(weights)
            if missing:
                raise PluginError(f"checkpoint {path} lacks {len(missing)} trained tensors, e.g. {min(missing)}")
            with torch.no_grad():
                for n in names:
                    params[n].copy_(weights[n].to(params[n].dtype))
            _load_optimizer(optimizer, ordered, _load_tensors(path / "optimizer.safetensors"), state["optimizer"])
            if ema is not None:
                ema = {k: v.float() for k, v in _load_tensors(path / "ema.safetensors").items()}
            start, losses, resumed_from = step, list(state.get("losses", [])), step

    module, optimizer = accelerator.prepare(denoiser.module, optimizer)
    module.train()
    device_t = accelerator.device
    n = len(data)
    process = accelerator.process_index
    end = cfg.steps if cfg.stop_after is None else min(cfg.steps, cfg.stop_after)

    def save_checkpoint(step: int) -> None:
        if ckpt_dir is None or not accelerator.is_main_process:
            return
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        final = ckpt_dir / f"checkpoint-{step:07d}"
        tmp = ckpt_dir / f".checkpoint-{step:07d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            _save_tensors({k: v for k, v in params.items()}, tmp / "trainable.safetensors")
            inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it
            opt_tensors, opt_meta = _optimizer_tensors(inner, ordered)
            _save_tensors(opt_tensors, tmp / "optimizer.safetensors")
            if ema is not None:
                _save_tensors(ema, tmp / "ema.safetensors")
            state = {
                "step": step,
                "losses": losses,
                "fingerprint": cfg.fingerprint(),
                "objective": objective.describe(),
                "optimizer": opt_meta,
            }
            (tmp / "state.json").write_text(json.dumps(state))  # written last: marks the folder complete
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # a full disk: give back what the unfinished checkpoint took
            raise
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for _, old in _checkpoints(ckpt_dir)[: -max(1, cfg.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)
        if on_checkpoint is not None:
            on_checkpoint(step)

    steps = range(start + 1, end + 1)
    if progress is not None:
        steps = progress.track(steps, f"training {type(denoiser).__name__} ({start}/{cfg.steps} done)", total=len(steps))
    for step in steps:
        lr = _lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        total = 0.0
        for micro in range(cfg.grad_accum):
            gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "train-step", step, micro, process))
            idx = torch.randint(0, n, (cfg.batch_size,), generator=gen)
            if cfg.flip and data.variants is not None:
                # the image itself or one of its encoded variants (e.g. its mirror image), uniformly
                pick = torch.randint(0, data.variants.shape[1] + 1, (cfg.batch_size,), generator=gen)
                x0 = data.latents[idx].clone()
                varied = (pick > 0).nonzero().flatten()
                if len(varied):
                    x0[varied] = data.variants[idx[varied], pick[varied] - 1]
                x0 = x0.to(device_t, torch.float32)
            else:
                x0 = data.latents[idx].to(device_t, torch.float32)
                if cfg.flip and data.augment is not None:
                    x0 = data.augment(x0, gen)
            rows = idx if data.conditioning_index is None else data.conditioning_index[idx]
            cond = {k: v[rows].to(device_t) for k, v in data.conditioning.items()}
            if cfg.caption_dropout > 0 and data.null_conditioning is not None:
                drop = torch.rand(cfg.batch_size, generator=gen) < cfg.caption_dropout
                if drop.any():
                    for k, null in data.null_conditioning.items():
                        v = cond[k]
                        mask = drop.to(device_t).reshape(-1, *([1] * (v.ndim - 1)))
                        cond[k] = torch.where(mask, null.to(device_t, v.dtype).expand_as(v), v)
            t = objective.sampler.sample(cfg.batch_size, gen)
            noise = torch.randn(x0.shape, generator=gen).to(device_t)
            x_t = objective.noisy_input(x0, noise, t)
            target = objective.target(x0, noise, t)
            sync = micro == cfg.grad_accum - 1
            ctx = nullcontext() if sync else accelerator.no_sync(module)
            with ctx, _training_attention(device_t):
                with torch.autocast(device_t.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    pred = denoiser.predict(module, x_t, objective.model_time(t).to(device_t), cond)
                err = (pred.float() - target.float()) ** 2
                per_sample = err.reshape(err.shape[0], -1).mean(dim=1)
                loss = (objective.loss_weight(t).to(device_t) * per_sample).mean()
                if not torch.isfinite(loss):
                    raise PluginError(f"the training loss is not finite at step {step} (lower lr)")
                accelerator.backward(loss / cfg.grad_accum)
            total += float(loss.detach()) / cfg.grad_accum
        if cfg.max_grad_norm > 0:
            accelerator.clip_grad_norm_(list(params.values()), cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            decay_now = min(cfg.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for k, p in params.items():
                    ema[k].mul_(decay_now).add_(p.detach().float(), alpha=1 - decay_now)
        losses.append(round(total, 6))
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
            save_checkpoint(step)
    accelerator.wait_for_everyone()
    finished = end >= cfg.steps
    if not finished:
        save_checkpoint(end)  # a stopped run leaves a checkpoint to resume from
    module.eval()
    # accelerate patches the forward of the model it is given, then wraps that model (DDP with several
    # processes): the patch sits on the inner module, not on the wrapper `prepare` returned
    _restore_forward(accelerator.unwrap_model(module))
    if finished and ema is not None:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(ema[k].to(p.dtype))
    accelerator.free_memory()
    return TrainResult(
        step=end, losses=losses, resumed_from=resumed_from, seconds=time.perf_counter() - start_time, finished=finished
    )


def _restore_forward(module) -> None:
    """Undo accelerate's mixed-precision patch of `module.forward` (autocast, outputs cast to fp32), which
    `accelerate launch --mixed_precision bf16` still applies in `prepare`.

    Left in place, the pipeline hands fp32 latents to its bf16 VAE after a fit on a GPU (seen on an H200).
    Not `accelerator.unwrap_model(keep_fp32_wrapper=False)`: it peels off every `functools.wraps` layer of
    the forward, diffusers' own decorators (`apply_lora_scale`, which makes `lora_scale` work) included.
    The patch is on the model given to `prepare`; with several processes `prepare` returns it wrapped in
    DistributedDataParallel, so a DDP/DataParallel wrapper given here is looked through (`.module`).
    """
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while isinstance(module, (DistributedDataParallel, DataParallel)):
        module = module.module
    original = vars(module).pop("_original_forward", None)
    if original is None:
        return
    vars(module).pop("forward", None)  # the class's forward again
    if getattr(original, "__func__", None) is not getattr(type(module), "forward", None):
        module.forward = original  # it was an instance's own forward before accelerate patched it


def _training_attention(device):
    """The attention kernels a training step may use: on CUDA every SDPA kernel but cuDNN's.

    cuDNN's attention backward failed in a full-size FLUX LoRA fit with gradient checkpointing on an H200
    (torch 2.11, CUDA 13: "mha_graph.execute(...).is_good()", then an illegal memory access that ends the
    process's CUDA context); with cuDNN's kernel switched off (the same global switch this context sets) the
    fit ran. The backward, and the recomputation gradient checkpointing does in it, run inside this context.
    """
    if getattr(device, "type", str(device)) != "cuda":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
