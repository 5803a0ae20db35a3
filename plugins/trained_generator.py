"""Generators that train weights: DermaFlux (FLUX + LoRA) and the Stable Diffusion baselines (sd15/sdxl).

They are built to differ only where the models do, so that a comparison changes the model only.
What is the same lives here once: the options that mean the same, their checks and training
defaults (one tiny-model budget for all), how a fit is keyed, reused, resumed, saved and reloaded,
how images are keyed, loading a pipeline and a LoRA file, the cached training set, the training
run around `diffusion_training.train`, and sampling with one CPU generator per prompt.

What differs stays in each plugin, which says it here:

* the model: `_components`, `model_folder`, `_model_location()` (its own words for a missing
  model), `_build_tiny(context)`, `_from_pretrained(folder, dtype)`, `_pipeline_class`,
  `_load_saved_pipeline(folder, context)`, `_tiny_identity()`;
* the options: `option_specs`, `resolved(context)` (calling `_resolve_training`),
  `_check_options()`, `sampling_options`, `_key_fields()` (what names it in its keys);
* sampling: `_encode_text(pipe, texts, device, opts)`, `_sampling_setup(pipe, opts)`,
  `_batch_inputs(batch, embeds, negative, opts)`, `_size_step(pipe)`;
* training: `trained_component`, `adapter`, `latent_chunk`, `_lora_targets(module, layers)`,
  `_conditioning(captions, storage, opts)`, and `_denoiser(module, pipe, height, width, opts)` and
  `_objective(opts)`: the model's half of `diffusion_training`, its noise schedule and loss target.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from PIL import Image

import dermabench
from dermabench import Option, parse_options
from dermabench.errors import DermabenchError, PluginError
from dermabench.seeding import derive_seed
from dermabench_plugins.model_files import LORA_FILE, folder_identity, json_hash, lora_file, sha256_file

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

# Options that mean the same in every trained generator, with the same defaults (each plugin places them
# among its own, so that its option list reads in order: the model, sampling, fitting).

#: which weights, and how they sit in memory
WEIGHT_OPTIONS: dict[str, Option] = {
    "lora": Option("str", None, "a trained LoRA (.safetensors file or folder; diffusers or kohya format)",
                   optional=True),
    "lora_scale": Option("float", 1.0, "strength of the LoRA", min=0),
    "dtype": Option("str", "auto", "weights dtype", choices=("auto", "bf16", "fp16", "fp32")),
    "offload": Option("str", "none", "CPU offload on CUDA", choices=("none", "model", "sequential")),
    "vae_tiling": Option("bool", False, "decode in tiles (large images, less memory)"),
    "vae_slicing": Option("bool", False, "decode one image at a time (less memory)"),
}

#: the optimiser and the LoRA's size
OPTIMISER_OPTIONS: dict[str, Option] = {
    "train_batch_size": Option("int", None, "images per step and process (default by profile for tiny; "
                               "1 otherwise)", min=1, optional=True),
    "grad_accum": Option("int", 1, "gradient accumulation micro-steps", min=1),
    "lr": Option("float", None, "AdamW learning rate (default 1e-4 LoRA, 1e-3 full)", min=0,
                 min_inclusive=False, optional=True),
    "weight_decay": Option("float", 1e-4, "AdamW weight decay (not on biases and norms)", min=0),
    "warmup": Option("int", None, "linear warm-up steps (default 0 LoRA, 5 % full)", min=0, optional=True),
    "lr_schedule": Option("str", None, "constant or cosine (default constant LoRA, cosine full)",
                          choices=("constant", "cosine"), optional=True),
    "rank": Option("int", 64, "LoRA rank", min=1),
    "alpha": Option("float", 64.0, "LoRA alpha (scale = alpha / rank)", min=0, min_inclusive=False),
}

#: the training loop's switches
LOOP_OPTIONS: dict[str, Option] = {
    "flip": Option("bool", True, "random flips of the training images (tiny: flips and quarter turns; "
                   "full-size: the mirror image, encoded too)"),
    "ema": Option("float", 0.0, "EMA decay of the trained weights (0 = off)", min=0, max=1,
                  max_inclusive=False),
    "checkpoint_every": Option("int", 250, "save a resumable checkpoint every N steps (0 = never)", min=0),
    "gradient_checkpointing": Option("bool", None, "trade compute for memory (default: on for full-size "
                                     "models, off for tiny)", optional=True),
}


@contextlib.contextmanager
def quiet():
    """Silence diffusers/transformers warnings (CLIP's 77-token truncation notice for every long caption...)."""
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    saved = dlogging.get_verbosity(), tlogging.get_verbosity()
    bars = dlogging.is_progress_bar_enabled(), tlogging.is_progress_bar_enabled()
    dlogging.set_verbosity_error()
    tlogging.set_verbosity_error()
    dlogging.disable_progress_bar()
    tlogging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        dlogging.set_verbosity(saved[0])
        tlogging.set_verbosity(saved[1])
        if bars[0]:
            dlogging.enable_progress_bar()
        if bars[1]:
            tlogging.enable_progress_bar()


def center_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    w, h = image.size
    scale = max(width / w, height / h)
    nw, nh = max(width, round(w * scale)), max(height, round(h * scale))
    image = image.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - width) // 2, (nh - height) // 2
    return image.crop((left, top, left + width, top + height))


def add_lora(module, opts: dict[str, Any], targets: list[str], seed: int) -> None:
    """Freeze `module` and give it a trainable peft LoRA (``rank``, ``alpha``) on the `targets` layers.

    peft draws the initial LoRA weights from torch's global RNG, which this torch seeds at random in
    every process: without `seed` two runs of the same fit (same key) would train different LoRAs.
    """
    import torch
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    module.requires_grad_(False)
    config = LoraConfig(r=opts["rank"], lora_alpha=opts["alpha"], init_lora_weights="gaussian", target_modules=targets)
    with torch.random.fork_rng(devices=[]):  # the host's RNG stream is left as it was
        torch.manual_seed(seed)
        module.add_adapter(config)
    cast_training_params(module, torch.float32)  # LoRA weights train in fp32 on a bf16/fp16 base


class TrainedGenerator(dermabench.Generator):
    """A generator whose `fit` trains (or reuses) weights under `work_dir/fits/<key>/`."""

    _fitted = False
    last_fit: dict[str, Any] = {}
    #: options that change how images are sampled from the weights, not the weights: a fit's key leaves them out
    sampling_options: ClassVar[tuple[str, ...]] = ()
    #: the pipeline component that fit trains (FLUX: "transformer", SD: "unet")
    trained_component: ClassVar[str]
    #: the folders a model folder must hold, and what an error calls such a folder
    _components: ClassVar[tuple[str, ...]]
    model_folder: ClassVar[str] = "model folder"
    #: the peft adapter name a LoRA file is loaded as
    adapter: ClassVar[str]
    #: images per VAE encode when the latents of a full-size model's train pool are cached
    latent_chunk: ClassVar[int] = 8

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

    def _snap(self, size: int, pipe) -> int:
        """Round an image side to what the model can make: a multiple of `_size_step(pipe)`."""
        step = self._size_step(pipe)
        return max(step, round(size / step) * step)

    # ------------------------------------------------------------------ keys (users' caches depend on them)

    def model_identity(self) -> dict[str, Any]:
        """What identifies the base weights, without reading gigabytes: configs + weight file names and sizes."""
        if self._model_info is None:
            if self.is_tiny:
                self._model_info = self._tiny_identity()
            else:
                self._model_info = folder_identity(self.config["model"], self._model_location())
        return self._model_info

    def cache_key(self, context: dermabench.RunContext | None = None) -> dict[str, Any]:
        """What determines the images besides prompts and size: the weights (model identity, LoRA file hash),
        every option as this run resolves it, and the device kind and weights dtype they are sampled in.

        `context` is the run's: its profile sets a tiny model's training budget (smoke 30, quick 1000, paper
        4000 steps), so images of a 30-step smoke fit never stand in for a quick run's; its device decides
        what dtype=auto means (bf16 on CUDA for full-size models, fp32 elsewhere). A host that calls
        ``cache_key()`` without it gets the options resolved as the `quick` profile and the device as
        device=auto would choose: it must then key on the profile and device itself.
        """
        from importlib.metadata import version

        import torch

        device, dtype = self._device_dtype(context if context is not None else dermabench.RunContext(device="auto"))
        # diffusers' version from its metadata (the same string as diffusers.__version__): importing diffusers
        # costs seconds, and with a model folder and every image cached nothing else in a run needs it
        return {
            **self._key_fields(),
            "model": self.model_identity(),
            "lora": sha256_file(self._lora_file()) if self.config["lora"] is not None else None,
            "options": self.resolved(context),
            "device": device.split(":")[0],
            "dtype": str(dtype).removeprefix("torch."),
            "diffusers": version("diffusers"),
            "torch": torch.__version__,
        }

    def _fit_key(self, train: Sequence[dermabench.Sample], opts: dict[str, Any], context) -> str:
        digest = hashlib.sha256()
        for sample in train:
            image = sample.image if sample.image.mode == "RGB" else sample.image.convert("RGB")
            digest.update(f"{sample.label}\t{sample.caption}\t{image.size}\n".encode())
            digest.update(image.tobytes())
        fit_opts = {k: v for k, v in opts.items() if k not in self.sampling_options}
        fields = {
            **self._key_fields(),
            "model": self.model_identity(),
            "options": fit_opts,
            "seed": context.seed,
            "train_pool": digest.hexdigest(),
            "n": len(train),
        }
        if opts["flip"] and not self._exact_latent_flips():
            # learned VAE: flips are encoded mirror images now, no longer flipped/turned latents; fits made the
            # old way are not reused (tiny models' DCT latents flip as before: their keys are unchanged)
            fields["flips"] = "encoded-hflip"
        return json_hash(fields)

    def _exact_latent_flips(self) -> bool:
        """Whether the VAE's latents can be flipped and turned exactly as its images (the tiny block-DCT ones)."""
        from dermabench_plugins.flux_tiny import DCTVAE

        if self.pipe is not None:
            return isinstance(self.pipe.vae, DCTVAE)
        return self.is_tiny

    # ------------------------------------------------------------------ loading

    def load(self, context: dermabench.RunContext):
        """The base pipeline on the run's device (tiny: built; otherwise from the folder / HF cache)."""
        if self.pipe is not None:
            return self.pipe
        import torch

        device, dtype = self._device_dtype(context)
        if self.config["offload"] != "none" and not device.startswith("cuda"):
            raise DermabenchError(f"generator '{self.name}': offload={self.config['offload']} needs a CUDA device")
        with quiet():
            if self.is_tiny:
                pipe = self._build_tiny(context)
                pipe.to(device=device) if dtype == torch.float32 else pipe.to(device=device, dtype=dtype)
            else:
                folder = self._model_location()
                missing = [part for part in self._components if not (folder / part).is_dir()]
                if missing:
                    raise DermabenchError(
                        f"generator '{self.name}': the {self.model_folder} {folder} lacks {', '.join(missing)}"
                    )
                pipe = self._from_pretrained(folder, dtype)
                if self.config["offload"] == "model":
                    pipe.enable_model_cpu_offload()
                elif self.config["offload"] == "sequential":
                    pipe.enable_sequential_cpu_offload()
                else:
                    pipe.to(device)
        self._setup(pipe)
        return pipe

    @staticmethod
    def _text_encoders(pipe) -> list:
        return [m for m in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if m is not None]

    def _modules(self, pipe) -> list:
        return [getattr(pipe, self.trained_component), pipe.vae, *self._text_encoders(pipe)]

    def _setup(self, pipe) -> None:
        """Make a loaded pipeline this generator's: memory switches, no progress bars, eval mode."""
        if self.config["vae_tiling"]:
            pipe.vae.enable_tiling()
        if self.config["vae_slicing"]:
            pipe.vae.enable_slicing()
        pipe.set_progress_bar_config(disable=True)
        for module in self._modules(pipe):
            module.eval()
        self.pipe = pipe

    def _apply_lora(self, path: Path) -> None:
        """Load a LoRA file (diffusers/peft or kohya format) into the pipeline as adapter `self.adapter`."""
        pipe = self.pipe
        assert pipe is not None
        if self._lora_loaded:
            pipe.delete_adapters(self.adapter)
        try:
            with quiet():
                pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=self.adapter,
                                       use_safetensors=True, local_files_only=True)
        except (ValueError, KeyError, RuntimeError, OSError) as exc:
            raise DermabenchError(f"generator '{self.name}': cannot apply LoRA {path}: {exc}") from exc
        from dermabench_plugins.flux_tiny import DCTVAE

        if isinstance(pipe.vae, DCTVAE) and (path.parent / "vae.safetensors").is_file():
            # a tiny model's LoRA fit keeps its VAE's train-pool standardisation beside the LoRA
            from safetensors.torch import load_file

            pipe.vae.load_state_dict(load_file(str(path.parent / "vae.safetensors")))
        pipe.set_adapters([self.adapter], adapter_weights=[self.config["lora_scale"]])
        self._lora_loaded = True

    # ------------------------------------------------------------------ sampling

    def generate(self, prompts: Sequence[dermabench.Prompt], context: dermabench.RunContext) -> list[Image.Image]:
        import torch

        opts = self.resolved(context)
        if not self._fitted and opts["train"] != "none":
            raise PluginError(
                f"generator '{self.name}': generate called before fit (train={opts['train']}); "
                "call fit, or use train=none for the base model"
            )
        pipe = self.load(context)
        if self.config["lora"] is not None and not self._lora_loaded:
            self._apply_lora(self._lora_file())
        if not prompts:
            return []
        height, width = self._snap(opts["height"], pipe), self._snap(opts["width"], pipe)
        # several processes: the host hands each its own shards of prompts (dermabench/processes.py)
        own = list(prompts)
        embeds = self._encode_prompts([p.text for p in own], opts)
        negative = self._sampling_setup(pipe, opts)
        arrays: list[np.ndarray] = []
        batches = range(0, len(own), opts["batch_size"])
        batches = context.progress.track(batches, f"{self.name}: {len(own)} images", total=len(batches))
        for start in batches:
            batch = own[start : start + opts["batch_size"]]
            inputs = self._batch_inputs(batch, embeds, negative, opts)
            # one generator per prompt, on the CPU: an image depends on its seed only
            generators = [torch.Generator("cpu").manual_seed(int(p.seed)) for p in batch]
            with torch.inference_mode(), quiet():
                out = pipe(
                    height=height,
                    width=width,
                    num_inference_steps=opts["steps"],
                    guidance_scale=opts["guidance"],
                    generator=generators,
                    output_type="np",
                    **inputs,
                ).images
            arrays.extend(np.clip(np.round(array * 255), 0, 255).astype(np.uint8) for array in out)
        return [Image.fromarray(array, "RGB") for array in arrays]

    def _encode_prompts(self, texts: Sequence[str], opts: dict[str, Any]) -> dict[str, tuple[torch.Tensor, Any]]:
        """(prompt_embeds L×D, pooled P or None) per distinct text, computed once, in chunks."""
        import torch

        pipe = self.pipe
        assert pipe is not None
        unique = list(dict.fromkeys(texts))
        out: dict[str, tuple[torch.Tensor, Any]] = {}
        device = pipe._execution_device
        for start in range(0, len(unique), 64):
            chunk = unique[start : start + 64]
            with torch.inference_mode(), quiet():
                embeds, pooled = self._encode_text(pipe, chunk, device, opts)
            for text, e, p in zip(chunk, embeds, pooled):
                out[text] = (e, p)
        return out

    def _encode_rows(self, texts: Sequence[str], storage, opts: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        """Embeddings of `texts` for training: (L×D per text, P per text or None), stacked on the CPU in `storage`.

        Each chunk is copied into the CPU tensors as soon as it is encoded and then let go, so the device never
        holds more than one chunk: FLUX.1-dev's T5 output is 512 × 4096 per caption (4 MiB in bf16), and a
        6,000-caption train pool kept on the GPU (then stacked there) took ~47 GiB.
        """
        import torch

        pipe = self.pipe
        assert pipe is not None
        device = pipe._execution_device
        embeds_rows = pooled_rows = None
        for start in range(0, len(texts), 64):
            chunk = list(texts[start : start + 64])
            with torch.inference_mode(), quiet():
                embeds, pooled = self._encode_text(pipe, chunk, device, opts)
            if embeds_rows is None:
                embeds_rows = torch.empty((len(texts), *embeds.shape[1:]), dtype=storage)
                if isinstance(pooled, torch.Tensor):
                    pooled_rows = torch.empty((len(texts), *pooled.shape[1:]), dtype=storage)
            embeds_rows[start : start + len(chunk)] = embeds
            if pooled_rows is not None:
                pooled_rows[start : start + len(chunk)] = pooled
            del embeds, pooled  # the chunk's device memory goes before the next chunk is encoded
        return embeds_rows, pooled_rows

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
        with _one_fitter(fit_dir, context):
            self._fit_once(pipe, train, opts, context, key, fit_dir)

    def _fit_once(self, pipe, train, opts, context, key: str, fit_dir: Path) -> None:
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

    def _train(self, pipe, train, opts, context, checkpoint_dir: Path):
        import torch
        from dermabench_plugins.diffusion_training import TrainConfig
        from dermabench_plugins.diffusion_training import train as run_training

        height, width = self._snap(opts["height"], pipe), self._snap(opts["width"], pipe)
        data = self._training_set(pipe, train, opts, height, width, context)
        trained = getattr(pipe, self.trained_component)
        if opts["train"] == "lora":
            add_lora(trained, opts, self._lora_targets(trained, opts["lora_layers"]),
                     seed=derive_seed(context.seed, f"{self.name}-lora-init"))
        else:
            trained.requires_grad_(True)
            if trained.dtype != torch.float32:
                with quiet():
                    trained.to(torch.float32)
        if opts["gradient_checkpointing"]:
            trained.enable_gradient_checkpointing()
        # what differs between the models: the network's half of training, the noise schedule and the loss target
        denoiser = self._denoiser(trained, pipe, height, width, opts)
        objective = self._objective(opts)
        cfg = TrainConfig(
            steps=opts["train_steps"],
            batch_size=opts["train_batch_size"],
            grad_accum=opts["grad_accum"],
            lr=opts["lr"],
            weight_decay=opts["weight_decay"],
            warmup_steps=opts["warmup"],
            lr_schedule=opts["lr_schedule"],
            ema_decay=opts["ema"],
            flip=opts["flip"],
            caption_dropout=opts["caption_dropout"],
            checkpoint_every=opts["checkpoint_every"],
            # tiny models train in fp32 everywhere: their budget was tuned so, and under bf16 autocast on a GPU
            # the tiny FLUX's full-parameter fit (lr 1e-3) diverged at its second step
            mixed_precision="no" if self.is_tiny else "auto",
            seed=derive_seed(context.seed, f"{self.name}-train"),
            stop_after=self.stop_after,
        )
        device, _ = self._device_dtype(context)
        encoders = self._text_encoders(pipe)
        park = not self.is_tiny and self.config["offload"] == "none" and device.startswith("cuda")
        if park:  # the embeddings are cached: lend the text encoders' GPU memory to training
            for encoder in encoders:
                encoder.to("cpu")
            torch.cuda.empty_cache()
        try:
            result = run_training(denoiser, data, objective, cfg, checkpoint_dir, device=device,
                                  progress=context.progress)
        finally:
            if park:
                for encoder in encoders:
                    encoder.to(device)
        trained.requires_grad_(False)
        trained.eval()
        return result

    def _training_set(self, pipe, train, opts, height, width, context):
        """The train pool's latents and text embeddings, computed once: training draws its batches from them.

        Embeddings: one row per distinct caption, on the CPU, and an index from image to row. Flips: the tiny
        models' block-DCT latents flip and turn exactly as their images (`DCTVAE.augment`); a learned VAE's do
        not, so with flip=true each image's mirror image is encoded too and training picks one of the two
        (kohya's flip_aug): twice the VAE encodes and twice the latents' memory (FLUX.1-dev at 1024 px: 2 ×
        0.5 MiB per image in bf16, 2.5 GiB for 2,500 images), and no vertical flips or turns, which would
        cost up to 8× for the rest of the dihedral group.
        """
        import torch
        from dermabench_plugins.diffusion_training import TrainingSet

        exact = self._exact_latent_flips()
        storage = torch.float32 if self.is_tiny else torch.bfloat16
        latents, variants = self._latents(pipe, train, height, width, context, storage=storage,
                                          mirrored=opts["flip"] and not exact)
        captions = [s.caption or f"This photo depicts a {dermabench.LABEL_NAMES[s.label]} lesion." for s in train]
        distinct = list(dict.fromkeys(captions))
        row = {caption: i for i, caption in enumerate(distinct)}
        index = torch.tensor([row[c] for c in captions], dtype=torch.long)
        conditioning, null = self._conditioning(distinct, storage, opts)
        augment = pipe.vae.augment if exact else None
        return TrainingSet(latents, conditioning, null, augment, variants=variants, conditioning_index=index)

    def _latents(self, pipe, train, height, width, context, storage=None,
                 mirrored: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The train pool's latents, B×C×h×w, shifted and scaled as the VAE's config says, in `storage` dtype;
        with `mirrored`, also the latents of the horizontally flipped images, B×1×C×h×w (else None).

        The tiny models' DCT VAE standardises each frequency on the train pool first, unless its statistics
        are already set: a trained tiny model loaded from its folder (model=<folder>) keeps the latent space
        its transformer was trained in.
        """
        import torch
        from dermabench_plugins.flux_tiny import DCTVAE

        vae = pipe.vae
        device = pipe._execution_device
        storage = storage or torch.float32
        shift = getattr(vae.config, "shift_factor", None) or 0.0  # FLUX's VAE shifts its latents, SD's does not
        scale = vae.config.scaling_factor

        def scaled(raw: torch.Tensor) -> torch.Tensor:
            return ((raw.float() - shift) * scale).to("cpu", storage)

        def pixels_of(samples) -> torch.Tensor:
            arrays = []
            for sample in samples:
                image = sample.image if sample.image.mode == "RGB" else sample.image.convert("RGB")
                if image.size != (width, height):
                    image = center_resize(image, width, height)
                arrays.append(np.asarray(image))
            return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(device, vae.dtype) / 127.5 - 1.0

        def encode(x: torch.Tensor) -> torch.Tensor:
            return scaled(vae.encode(x).latent_dist.mode())

        if isinstance(vae, DCTVAE):
            # tiny models: the fixed DCT "autoencoder" standardises each frequency on the train pool first
            with torch.inference_mode():
                x = pixels_of(train)
                if not vae.is_normalized():
                    vae.fit_normalization(x)
                latents = encode(x)
                variants = encode(x.flip(3))[:, None] if mirrored else None
            del x
            return latents, variants
        chunk = self.latent_chunk
        latents, variants = [], []
        batches = range(0, len(train), chunk)
        for start in context.progress.track(batches, f"{self.name}: caching latents", total=len(batches)):
            with torch.inference_mode():
                x = pixels_of(train[start : start + chunk])
                latents.append(encode(x))
                if mirrored:  # the mirror image, encoded (a flipped latent is not the latent of a flipped image)
                    variants.append(encode(x.flip(3)))
                del x
        return torch.cat(latents), (torch.cat(variants)[:, None] if mirrored else None)

    def _save_trained(self, final: Path, opts, result, seconds: float) -> None:
        from accelerate import PartialState

        state = PartialState()
        if not state.is_main_process:  # under `accelerate launch`: one process writes, the others wait
            state.wait_for_everyone()
            return
        tmp = final.parent / (final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        pipe = self.pipe
        if opts["train"] == "lora":
            from dermabench_plugins.flux_tiny import DCTVAE
            from peft.utils import get_peft_model_state_dict

            trained = getattr(pipe, self.trained_component)
            layers = get_peft_model_state_dict(trained)
            # the adapter's peft config travels in the file's metadata (rank, alpha, targets)
            metadata = trained.peft_config["default"].to_dict()
            part = self.trained_component  # diffusers names the arguments after the component
            self._pipeline_class.save_lora_weights(
                tmp, weight_name=LORA_FILE, **{f"{part}_lora_layers": layers, f"{part}_lora_adapter_metadata": metadata}
            )
            if isinstance(pipe.vae, DCTVAE):  # tiny: the VAE's train-pool standardisation goes beside the LoRA
                from safetensors.torch import save_file

                save_file({k: v.contiguous() for k, v in pipe.vae.state_dict().items()}, str(tmp / "vae.safetensors"))
        else:
            with quiet():
                pipe.save_pretrained(tmp, safe_serialization=True)
        info = {
            "train": opts["train"],
            "steps": result.step,
            "seconds": round(seconds, 2),
            "first_loss": result.losses[0] if result.losses else None,
            "final_loss": float(np.mean(result.losses[-20:])) if result.losses else None,
            "resumed_from": result.resumed_from,
        }
        (tmp / "done.json").write_text(json.dumps(info, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        state.wait_for_everyone()

    def _load_trained(self, final: Path, opts, context) -> None:
        """Switch the pipeline to the saved trained weights (the same code path for fresh and cached fits)."""
        if opts["train"] == "lora":
            trained = getattr(self.load(context), self.trained_component)
            if "default" in getattr(trained, "peft_config", {}):
                trained.delete_adapters("default")
            self._apply_lora(final / LORA_FILE)
        else:
            self._load_saved_pipeline(final, context)


@contextlib.contextmanager
def _one_fitter(fit_dir: Path, context):
    """Two runs sharing an `--out` that need the same fit take turns: the second waits, then reuses the weights.

    Without this they would train into one checkpoint folder and delete each other's files. A kernel lock
    (flock; a killed process releases it), taken only by a single-process run: under `accelerate launch`
    every process of the run trains together, and one of them waiting on the lock would stall the rest.
    """
    from accelerate import PartialState

    if PartialState().num_processes > 1:
        yield
        return
    fit_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(fit_dir.parent / f"{fit_dir.name}.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            context.progress.log(f"waiting for another run that is fitting the same model ({fit_dir})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
