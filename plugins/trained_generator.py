"""Generators that train weights (DermaFlux, the Stable Diffusion baselines): what they share, once.

DermaFlux and sd15/sdxl are built to differ only where the models do, so that a comparison
changes the model only. What differs stays in each plugin: the model and how it is loaded, the
noise schedule and the loss target (`diffusion_training`), and how they train and save weights.
What is the same lives here: options and their checks, the training budget, how a fit is keyed,
reused, resumed and recorded, and how the images are keyed.

A subclass provides `resolved(context)` (calling `_resolve_training`), `load(context)`,
`_model_location()`, `_tiny_identity()`, `_key_fields()`, `_apply_lora(file)`,
`_train(pipe, train, opts, context, ckpt_dir)` (returning a result with `finished`, `step`,
`resumed_from`), `_save_trained(final, opts, result, seconds)` and `_load_trained(final, opts, context)`,
and sets `sampling_options`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import dermabench
from dermabench import parse_options
from dermabench.errors import DermabenchError, PluginError
from dermabench_plugins.model_files import folder_identity, json_hash, lora_file, sha256_file

if TYPE_CHECKING:  # torch is imported when a model is needed (listing plugins stays fast)
    import torch

TINY_MODELS = ("tiny", "micro")

#: tiny-model training budget per profile (full-parameter, from scratch). One budget for every trained
#: generator: the tiny sd15/sdxl baselines train the same steps × batch as DermaFlux tiny
TINY_TRAIN_DEFAULTS = {
    "smoke": {"train_steps": 30, "train_batch_size": 16},
    "quick": {"train_steps": 1000, "train_batch_size": 16},
    "paper": {"train_steps": 4000, "train_batch_size": 32},
}


class TrainedGenerator(dermabench.Generator):
    """A generator whose `fit` trains (or reuses) weights under `work_dir/fits/<key>/`."""

    _fitted = False
    last_fit: dict[str, Any] = {}
    #: options that change how images are sampled from the weights, not the weights: a fit's key leaves them out
    sampling_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.config = parse_options(f"generator '{self.name}'", options, self.option_specs, "--generator-opt")
        self.pipe = None
        self._fitted = False
        self._lora_loaded = False
        self._model_info: dict[str, Any] | None = None
        self.last_fit: dict[str, Any] = {}
        #: stop training after this step, leaving a checkpoint (tests simulate a killed fit with it)
        self.stop_after: int | None = None
        c = self.config
        if c["lora"] is not None and c["train"] in ("lora", "full"):
            raise DermabenchError(
                f"generator '{self.name}': lora= applies a trained LoRA and train={c['train']} would train another; "
                "use train=none with lora=, or drop lora= to train"
            )
        if c["offload"] != "none" and self.is_tiny:
            raise DermabenchError(f"generator '{self.name}': offload is for full-size models on CUDA, not model=tiny")
        self._check_options()
        if c["lora"] is not None:
            self._lora_file()  # fails early if missing or not safetensors
        if not self.is_tiny:
            self._model_location()  # fails early for a missing local folder or an uncached hub id

    def _check_options(self) -> None:
        """A subclass's own checks of its options, before any file is looked at."""

    # ------------------------------------------------------------------ resolution of options

    @property
    def is_tiny(self) -> bool:
        return self.config["model"] in TINY_MODELS

    @property
    def train_mode(self) -> str:
        mode = self.config["train"]
        if mode != "auto":
            return mode
        if self.config["lora"] is not None:
            return "none"
        return "full" if self.is_tiny else "lora"

    def _lora_file(self) -> Path:
        return lora_file(self.config["lora"], self.name)

    def _resolve_training(self, c: dict[str, Any], profile: str) -> None:
        """Fill in the training options' defaults: the profile's budget for tiny models, then the optimiser's."""
        tiny = self.is_tiny
        mode = self.train_mode
        full = mode == "full"
        if tiny and mode != "none":
            defaults = TINY_TRAIN_DEFAULTS.get(profile, TINY_TRAIN_DEFAULTS["quick"])
            c["train_steps"] = c["train_steps"] or defaults["train_steps"]
            c["train_batch_size"] = c["train_batch_size"] or defaults["train_batch_size"]
        c["train_steps"] = c["train_steps"] or 1000
        c["train_batch_size"] = c["train_batch_size"] or 1
        if c["lr"] is None:
            c["lr"] = 1e-3 if full else 1e-4
        if c["warmup"] is None:
            c["warmup"] = max(1, c["train_steps"] // 20) if full else 0
        if c["lr_schedule"] is None:
            c["lr_schedule"] = "cosine" if full else "constant"
        if c["gradient_checkpointing"] is None:
            c["gradient_checkpointing"] = not tiny
        c["train"] = mode

    def _device_dtype(self, context: dermabench.RunContext) -> tuple[str, torch.dtype]:
        import torch

        device = context.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        choice = self.config["dtype"]
        if choice == "auto":
            dtype = torch.bfloat16 if device.startswith("cuda") and not self.is_tiny else torch.float32
        else:
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[choice]
        return device, dtype

    # ------------------------------------------------------------------ keys (users' caches depend on them)

    def model_identity(self) -> dict[str, Any]:
        """What identifies the base weights, without reading gigabytes: configs + weight file names and sizes."""
        if self._model_info is None:
            if self.is_tiny:
                self._model_info = self._tiny_identity()
            else:
                self._model_info = folder_identity(self.config["model"], self._model_location())
        return self._model_info

    def cache_key(self) -> dict[str, Any]:
        import diffusers
        import torch

        return {
            **self._key_fields(),
            "model": self.model_identity(),
            "lora": sha256_file(self._lora_file()) if self.config["lora"] is not None else None,
            "options": self.resolved(None),
            "diffusers": diffusers.__version__,
            "torch": torch.__version__,
        }

    def _fit_key(self, train: Sequence[dermabench.Sample], opts: dict[str, Any], context) -> str:
        digest = hashlib.sha256()
        for sample in train:
            image = sample.image if sample.image.mode == "RGB" else sample.image.convert("RGB")
            digest.update(f"{sample.label}\t{sample.caption}\t{image.size}\n".encode())
            digest.update(image.tobytes())
        fit_opts = {k: v for k, v in opts.items() if k not in self.sampling_options}
        return json_hash(
            {
                **self._key_fields(),
                "model": self.model_identity(),
                "options": fit_opts,
                "seed": context.seed,
                "train_pool": digest.hexdigest(),
                "n": len(train),
            }
        )

    # ------------------------------------------------------------------ fit

    def fit(self, train: Sequence[dermabench.Sample], context: dermabench.RunContext) -> None:
        opts = self.resolved(context)
        pipe = self.load(context)
        if self.config["lora"] is not None:
            self._apply_lora(self._lora_file())
        if opts["train"] == "none":
            self._fitted = True
            return
        if not train:
            raise PluginError(f"generator '{self.name}': the train pool is empty")
        key = self._fit_key(train, opts, context)
        fit_dir = Path(context.work_dir) / "fits" / key[:16]
        final = fit_dir / "final"
        t0 = time.perf_counter()
        if (final / "done.json").is_file():
            context.progress.log(f"{self.name}: reusing trained weights {final}")
            self._load_trained(final, opts, context)
            self.last_fit = {**json.loads((final / "done.json").read_text()), "reused": True}
            self._fitted = True
            return
        fit_dir.mkdir(parents=True, exist_ok=True)
        (fit_dir / "fit.json").write_text(json.dumps({"key": key, "options": opts}, indent=1, default=str))
        result = self._train(pipe, train, opts, context, fit_dir / "checkpoints")
        if not result.finished:  # stop_after (tests): a checkpoint is left, nothing final
            self.last_fit = {"step": result.step, "finished": False, "resumed_from": result.resumed_from}
            return
        self._save_trained(final, opts, result, time.perf_counter() - t0)
        shutil.rmtree(fit_dir / "checkpoints", ignore_errors=True)
        self._load_trained(final, opts, context)
        self.last_fit = {**json.loads((final / "done.json").read_text()), "reused": False}
        self._fitted = True
