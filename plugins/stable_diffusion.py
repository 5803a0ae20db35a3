"""`sd15` and `sdxl`: Stable Diffusion baselines, fine-tuned and sampled under DermaFlux's budget.

The DermaFlux paper reports synthetic images from FLUX + LoRA beating diffusion-made
ones by up to 9 %; these plugins are the diffusion side of that comparison, built to
mirror `dermaflux` option for option so that a comparison changes the model only.

**Full scale (needs a GPU and local weights).** ``model=`` a diffusers folder or a hub
id resolved from the Hugging Face cache: `sd15` takes SD 1.x / 2.x
(``stable-diffusion-v1-5/stable-diffusion-v1-5``, ``stabilityai/stable-diffusion-2-1``;
`StableDiffusionPipeline`), `sdxl` takes SDXL (``stabilityai/stable-diffusion-xl-base-1.0``;
`StableDiffusionXLPipeline`). Offline (``HF_HUB_OFFLINE=1``) or with a local path nothing
is downloaded (``local_files_only``); a missing model or component fails at once with a
`DermabenchError` that names it. Weights load as safetensors only. The NSFW safety
checker is not loaded (it blacks out flagged images, which would bias a benchmark).
``lora=FILE`` applies a trained LoRA (diffusers/peft or kohya format, via
``load_lora_weights``) at ``lora_scale``; with a LoRA given, `fit` trains nothing by
default. Memory switches: ``offload=model|sequential|none``, ``vae_tiling``, ``vae_slicing``.

**Fine-tuning (`fit`).** LoRA via peft on the UNet's attention layers (``lora_layers``:
to_q/k/v/out of every self- and cross-attention, or ``blocks``: + the transformer
blocks' projections and MLPs; ``rank``/``alpha`` 64/64 as DermaFlux), the DDPM
denoising loss with the target the scheduler config declares (ε for SD 1.5 / 2.1-base,
v for SD 2.1; ``snr_gamma`` adds min-SNR-γ weighting), uniform timesteps, latents and
text embeddings computed once and cached, SDXL's size/crop conditioning fed the
training size. The loop — AdamW, warm-up and schedule, gradient accumulation, EMA,
bf16 autocast on CUDA, `accelerate` (``accelerate launch`` for several GPUs),
checkpoints every ``checkpoint_every`` steps with resume — is DermaFlux's
(`diffusion_training.train`); what differs is exactly the model (`UNetDenoiser`), the
noise schedule and the loss target (`DDPMObjective` instead of `RectifiedFlow`). The LoRA
is saved as ``pytorch_lora_weights.safetensors``, loadable by
``StableDiffusionPipeline.load_lora_weights`` (``StableDiffusionXLPipeline`` for `sdxl`).

**CPU scale (``model=tiny``, the default).** `sd_tiny` builds a small SD-architecture
pipeline from configs — a 2.5 M-parameter UNet2DConditionModel (DermaFlux tiny's
transformer: 2.3 M; the tests hold the two within ±25 %) and a frozen random CLIP
text encoder over the same word tokenizer, on the same fixed DCT latent space as
DermaFlux tiny, SD's noise schedule with SD 2.x's v-prediction (ε, SD 1.5's target,
samples only noise after the CPU budget; ``prediction_type=epsilon`` to see it) —
trained **from scratch, full-parameter** with DermaFlux tiny's per-profile budget
(`trained_generator.TINY_TRAIN_DEFAULTS`: same steps × batch), learning rate,
warm-up and schedule. ``sdxl`` with ``model=tiny`` builds the SDXL variant
(two text encoders, size conditioning). ``model=micro`` is for tests.

**Sampling.** ``sampler=`` ``dpmsolver++`` (the default: DPM-Solver++ 2M,
deterministic), ``ddim`` (η = 0, deterministic) or ``ddpm`` (ancestral; needs many
steps), each built from the model's scheduler config (same betas and prediction type).
Defaults: ``steps`` 25 (tiny: 12, DermaFlux tiny's count), ``guidance`` (classifier-free,
against the empty caption) 7.5 for `sd15`, 5.0 for `sdxl`, 1 = off for tiny models (trained
without caption dropout, they have no unconditional branch to guide against; train with
``caption_dropout=0.1`` to use guidance).

**Caching and determinism** as `dermaflux`: a fit is keyed by model, options and a hash
of the train pool and reused from ``work_dir/fits/<key>/final``; every prompt gets its own
CPU ``torch.Generator`` seeded with ``prompt.seed``, so an image depends on its seed only.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import dermabench
from dermabench import Option
from dermabench.errors import DermabenchError
from dermabench.seeding import derive_seed
from dermabench_plugins.model_files import model_location
from dermabench_plugins.trained_generator import (LOOP_OPTIONS, OPTIMISER_OPTIONS, WEIGHT_OPTIONS,
                                                  TrainedGenerator, quiet)

if TYPE_CHECKING:  # torch and diffusers are imported when a model is needed (listing plugins stays fast)
    import torch
    from diffusers import DiffusionPipeline

#: bump when fitting or sampling changes, so cached weights and images are not reused
ALGORITHM_VERSION = "1"
SAMPLERS = ("dpmsolver++", "ddim", "ddpm")

#: LoRA targets, by module-name suffix inside the UNet's attention (transformer) blocks
_ATTENTION = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
              "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")  # fmt: skip
_PROJECTIONS = ("proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
LORA_LAYERS = {"attention": _ATTENTION, "blocks": _ATTENTION + _PROJECTIONS}

log = logging.getLogger("dermabench.stable_diffusion")


class StableDiffusionGenerator(TrainedGenerator):
    """Stable Diffusion 1.x/2.x + LoRA fine-tuned on captioned lesions; a tiny from-scratch SD on CPUs."""

    name = "sd15"
    description = "Stable Diffusion 1.x/2.x (DDPM UNet) + LoRA on captioned lesions; model=tiny trains on CPU"
    #: SDXL's two text encoders and size conditioning
    xl: ClassVar[bool] = False
    default_guidance: ClassVar[float] = 7.5
    example_hub_id: ClassVar[str] = "stable-diffusion-v1-5/stable-diffusion-v1-5"

    option_specs: ClassVar[dict[str, Option]] = {
        # the model
        "model": Option("str", "tiny", "tiny | micro | a diffusers folder | a hub id in the HF cache"),
        **WEIGHT_OPTIONS,
        # sampling
        "sampler": Option("str", "dpmsolver++", "dpmsolver++ (DPM-Solver++ 2M), ddim (eta 0) or ddpm (ancestral)",
                          choices=SAMPLERS),
        "steps": Option("int", None, "denoising steps (default 25; tiny: 12)", min=1, optional=True),
        "guidance": Option("float", None, "classifier-free guidance scale against the empty caption (default 7.5 "
                           "sd15, 5 sdxl, 1 = off for tiny models)", min=0, optional=True),
        "height": Option("int", None, "image height (default: the run's image size for tiny models, the model's "
                         "native size otherwise)", min=16, optional=True),
        "width": Option("int", None, "image width (see height)", min=16, optional=True),
        "batch_size": Option("int", None, "images per denoising batch (default 64 tiny, 4 otherwise)", min=1,
                             optional=True),
        # fitting
        "train": Option("str", "auto", "what fit trains: auto (tiny: full; a LoRA given: none; else lora)",
                        choices=("auto", "none", "lora", "full")),
        "train_steps": Option("int", None, "optimisation steps (default by profile for tiny models, as dermaflux; "
                              "1000 otherwise)", min=1, optional=True),
        **OPTIMISER_OPTIONS,
        "lora_layers": Option("str", "attention", "LoRA targets: attention (to_q/k/v/out of self- and "
                              "cross-attention), blocks (+ projections and MLPs)", choices=tuple(LORA_LAYERS)),
        "prediction_type": Option("str", None, "what a tiny UNet learns to predict (default v_prediction, as SD "
                                  "2.x); full-size models follow their scheduler config",
                                  choices=("epsilon", "v_prediction"), optional=True),
        "snr_gamma": Option("float", None, "min-SNR-γ loss weighting (e.g. 5; none = off)", min=0,
                            min_inclusive=False, optional=True),
        "caption_dropout": Option("float", 0.0, "share of captions replaced by the empty caption (for guidance)",
                                  min=0, max=1),
        **LOOP_OPTIONS,
    }

    #: the options that change sampling, not the trained weights: a fit's key leaves them out
    sampling_options = ("sampler", "steps", "guidance", "batch_size", "offload", "vae_tiling", "vae_slicing",
                        "lora_scale", "checkpoint_every")
    pipe: DiffusionPipeline | None
    #: fit trains the UNet; a LoRA file is loaded as adapter "sd"
    trained_component = "unet"
    adapter = "sd"
    #: the model's noise schedule: the samplers and the DDPM objective are built from it
    _scheduler_config: dict[str, Any] | None = None

    def _check_options(self) -> None:
        if self.config["prediction_type"] is not None and not self.is_tiny:
            raise DermabenchError(
                f"generator '{self.name}': prediction_type is for tiny models; a full-size model trains with the "
                "target its scheduler config declares"
            )

    # ------------------------------------------------------------------ resolution of options

    def _tiny_spec(self):
        from dermabench_plugins.sd_tiny import spec_from

        chosen = self.config["prediction_type"]
        return spec_from(self.config["model"], **({"prediction_type": chosen} if chosen else {}))

    def resolved(self, context: dermabench.RunContext | None = None) -> dict[str, Any]:
        """Every option with its effective value (defaults that depend on the model/profile filled in)."""
        c = dict(self.config)
        tiny = self.is_tiny
        if c["steps"] is None:
            c["steps"] = 12 if tiny else 25
        if c["guidance"] is None:
            c["guidance"] = 1.0 if tiny else self.default_guidance
        size = context.image_size if context is not None else 64
        for side in ("height", "width"):
            if c[side] is None:
                c[side] = size if tiny else self._native_size()
        if c["batch_size"] is None:
            c["batch_size"] = 64 if tiny else 4
        # tiny models: the same budget as DermaFlux tiny (same steps × batch per profile)
        self._resolve_training(c, context.profile if context is not None else "quick")
        if tiny:
            c["prediction_type"] = self._tiny_spec().prediction_type
        return c

    def _native_size(self) -> int:
        """The model's own resolution: UNet sample_size × the VAE's downscale (512 SD 1.5, 768 SD 2.1, 1024 SDXL)."""
        if self.pipe is not None:
            return int(self.pipe.unet.config.sample_size) * int(self.pipe.vae_scale_factor)
        folder = self._model_location()
        try:
            unet = json.loads((folder / "unet" / "config.json").read_text())
            vae = json.loads((folder / "vae" / "config.json").read_text())
            return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
        except (OSError, ValueError, KeyError, TypeError):
            return 1024 if self.xl else 512

    # ------------------------------------------------------------------ the model: where, what, how it loads

    @property
    def _components(self) -> tuple[str, ...]:
        base = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
        return base + (("text_encoder_2", "tokenizer_2") if self.xl else ())

    @property
    def _pipeline_class(self):
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        return StableDiffusionXLPipeline if self.xl else StableDiffusionPipeline

    def _model_location(self) -> Path:
        """The local folder of the model: the path itself, or its snapshot in the HF cache. Never downloads."""
        model = self.config["model"]
        return model_location(
            model,
            self.name,
            kind="Stable Diffusion",
            holds=f"{', '.join(c + '/' for c in self._components)} (single-file .ckpt/.safetensors checkpoints: "
            "convert them with diffusers first)",
            offline=f"Download it where there is network (`hf download {model}`) or pass "
            "model=/path/to/diffusers-folder",
            online=f"Download it first (`hf download {model}`, e.g. {self.example_hub_id}) or pass "
            "model=/path/to/diffusers-folder",
        )

    def _tiny_identity(self) -> dict[str, Any]:
        from dermabench_plugins.sd_tiny import TINY_VERSION

        return {"tiny": self.config["model"], "xl": self.xl, "version": TINY_VERSION,
                "spec": self._tiny_spec().to_dict()}

    def _key_fields(self) -> dict[str, Any]:
        """What names the generator in its fit and image-cache keys (frozen: users' caches are keyed on it).
        sd15 and sdxl share options and tiny presets: the name keeps their fits and images apart."""
        return {"algorithm": ALGORITHM_VERSION, "generator": self.name}

    def _from_pretrained(self, folder: Path, dtype) -> DiffusionPipeline:
        import dermabench_plugins.sd_tiny  # noqa: F401 - a saved tiny SD names BlockDCTVAE as its VAE

        extra = {"add_watermarker": False} if self.xl else {"safety_checker": None, "requires_safety_checker": False}
        try:
            with quiet():
                return self._pipeline_class.from_pretrained(folder, dtype=dtype, local_files_only=True,
                                                            use_safetensors=True, **extra)
        except (OSError, ValueError, TypeError) as exc:
            raise DermabenchError(f"generator '{self.name}': cannot load {folder}: {exc}") from exc

    def _build_tiny(self, context: dermabench.RunContext) -> DiffusionPipeline:
        from dermabench_plugins.sd_tiny import build_tiny_sd

        return build_tiny_sd(self._tiny_spec(), seed=derive_seed(context.seed, self.name), xl=self.xl)

    def _setup(self, pipe) -> None:
        super()._setup(pipe)
        self._scheduler_config = dict(pipe.scheduler.config)

    def _load_saved_pipeline(self, folder: Path, context: dermabench.RunContext) -> None:
        """A fully trained pipeline, as `_save_trained` wrote it: an ordinary diffusers folder."""
        device, dtype = self._device_dtype(context)
        pipe = self._from_pretrained(folder, dtype)
        pipe.to(device)
        self._setup(pipe)

    # ------------------------------------------------------------------ what sampling a UNet differs in

    def _sampler(self, opts: dict[str, Any]):
        """The chosen sampler, built from the model's scheduler config (same betas and prediction type)."""
        from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

        config = self._scheduler_config
        if opts["sampler"] == "ddpm":
            return DDPMScheduler.from_config(config)
        if opts["sampler"] == "ddim":
            return DDIMScheduler.from_config(config)
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)

    def _encode_text(self, pipe, texts: list[str], device, opts) -> tuple[torch.Tensor, Any]:
        """CLIP embeddings (L×D each); SDXL: + the pooled ones of its second encoder (P each), else None."""
        if self.xl:
            pe, _, pooled, _ = pipe.encode_prompt(prompt=texts, device=device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
            return pe, pooled
        pe, _ = pipe.encode_prompt(texts, device, 1, do_classifier_free_guidance=False)
        return pe, [None] * len(texts)

    def _null_embeddings(self, opts) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The conditioning of 'no caption', as the pipeline's classifier-free guidance uses it: the empty
        caption's embedding (SDXL with force_zeros_for_empty_prompt: zeros)."""
        import torch

        pe, pooled = self._encode_prompts([""], opts)[""]
        if self.xl and self.pipe.config.get("force_zeros_for_empty_prompt", False):
            pe, pooled = torch.zeros_like(pe), torch.zeros_like(pooled)
        return pe, pooled

    def _sampling_setup(self, pipe, opts) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The chosen sampler; the unconditional embeddings when classifier-free guidance is on (guidance > 1)."""
        pipe.scheduler = self._sampler(opts)
        return self._null_embeddings(opts) if opts["guidance"] > 1 else None

    def _batch_inputs(self, batch, embeds, negative, opts) -> dict[str, Any]:
        import torch

        pe = torch.stack([embeds[p.text][0] for p in batch])
        inputs: dict[str, Any] = {"prompt_embeds": pe}
        if self.xl:
            inputs["pooled_prompt_embeds"] = torch.stack([embeds[p.text][1] for p in batch])
        if negative is not None:
            inputs["negative_prompt_embeds"] = negative[0][None].expand_as(pe).contiguous()
            if self.xl:
                pooled = inputs["pooled_prompt_embeds"]
                inputs["negative_pooled_prompt_embeds"] = negative[1][None].expand_as(pooled).contiguous()
        return inputs

    # ------------------------------------------------------------------ what training a UNet differs in

    def _size_step(self, pipe) -> int:
        """The VAE's downscale × the UNet's downsampling: a side the UNet can make is a multiple of it."""
        return int(pipe.vae_scale_factor) * 2 ** (len(pipe.unet.config.block_out_channels) - 1)

    def _lora_targets(self, unet, layers: str) -> list[str]:
        import torch

        suffixes = LORA_LAYERS[layers]
        names = []
        for name, module in unet.named_modules():
            if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                continue
            if ".attentions." not in f".{name}":
                continue
            if any(name.endswith("." + s) for s in suffixes):
                names.append(name)
        return names

    def _denoiser(self, unet, pipe, height: int, width: int, opts) -> UNetDenoiser:
        return UNetDenoiser(unet, (height, width) if self.xl else None)

    def _objective(self, opts):
        from dermabench_plugins.diffusion_training import DDPMObjective

        # the difference to DermaFlux: DDPM noise schedule and ε/v target (from the scheduler) instead of a flow
        return DDPMObjective.from_scheduler(self._scheduler_config, snr_gamma=opts["snr_gamma"])

    def _latents(self, pipe, train, height, width, context, **options):
        import torch

        vae = pipe.vae
        upcast = vae.dtype == torch.float16 and vae.config.get("force_upcast", False)
        if upcast:  # SDXL's VAE overflows in fp16 (the pipeline upcasts it to decode, too)
            vae.to(torch.float32)
        try:
            return super()._latents(pipe, train, height, width, context, **options)
        finally:
            if upcast:
                vae.to(torch.float16)

    def _conditioning(self, captions: list[str], storage, opts) -> tuple[dict, dict]:
        """CLIP embeddings of the captions (SDXL: + pooled), one row per caption on the CPU, and the
        unconditional ones (caption dropout)."""
        prompt_embeds, pooled = self._encode_rows(captions, storage, opts)
        conditioning = {"prompt_embeds": prompt_embeds}
        null_pe, null_pooled = self._null_embeddings(opts)
        null = {"prompt_embeds": null_pe[None].cpu()}
        if self.xl:
            conditioning["pooled"] = pooled
            null["pooled"] = null_pooled[None].cpu()
        return conditioning, null


class StableDiffusionXLGenerator(StableDiffusionGenerator):
    """SDXL + LoRA fine-tuned on captioned lesions; a tiny from-scratch SDXL-architecture model on CPUs."""

    name = "sdxl"
    description = "Stable Diffusion XL (DDPM UNet, two text encoders) + LoRA on captioned lesions; model=tiny on CPU"
    xl = True
    default_guidance = 5.0
    example_hub_id = "stabilityai/stable-diffusion-xl-base-1.0"


# ---------------------------------------------------------------------- the UNet half of training


class UNetDenoiser:
    """The `diffusion_training.Denoiser` interface for UNet2DConditionModel (duck-typed, so that importing
    this module does not import torch). `size` (height, width): SDXL's added size/crop conditioning
    (original size = target size = the training size, no crop); None for SD 1.x/2.x."""

    def __init__(self, unet, size: tuple[int, int] | None = None) -> None:
        import torch

        self.module = unet
        self.time_ids = None if size is None else torch.tensor([[size[0], size[1], 0, 0, size[0], size[1]]],
                                                                dtype=torch.float32)

    def predict(self, module, x_t, model_time, cond):
        dtype = next(p for p in module.parameters()).dtype
        extra = {}
        if self.time_ids is not None:
            b = x_t.shape[0]
            extra["added_cond_kwargs"] = {
                "text_embeds": cond["pooled"].to(dtype),
                "time_ids": self.time_ids.to(x_t.device, dtype).expand(b, -1),
            }
        return module(x_t.to(dtype), model_time, encoder_hidden_states=cond["prompt_embeds"].to(dtype),
                      return_dict=False, **extra)[0]

    def trainable_parameters(self):
        return {n: p for n, p in self.module.named_parameters() if p.requires_grad}

    def no_decay(self, name, param):
        return param.ndim < 2 or "norm" in name


@dermabench.hookimpl
def register_generators(register):
    register(StableDiffusionGenerator)
    register(StableDiffusionXLGenerator)
