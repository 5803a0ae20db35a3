"""`dermaflux`: FLUX (a rectified-flow MMDiT) adapted to dermatology by fine-tuning on captioned lesions.

DermaFlux (arXiv 2603.16392) = FLUX.1-dev + a LoRA trained with the rectified-flow
objective on captioned dermoscopy, prompted with the class in the text ("This photo
depicts a malignant lesion. ..."). One plugin serves both ends:

**Full scale (the paper path; needs a GPU and local weights).**
``--generator-opt model=/models/FLUX.1-dev`` (a diffusers folder) or a hub id
(``black-forest-labs/FLUX.1-dev``) resolved from the Hugging Face cache. Offline
(``HF_HUB_OFFLINE=1``) or with a local path nothing is downloaded
(``local_files_only``); a missing model fails at once with a `DermabenchError`
that says what is missing. bf16 on CUDA. ``lora=FILE`` applies a trained LoRA —
diffusers/peft format or kohya sd-scripts format (e.g. the released
``flux_lora_64_64.safetensors``; diffusers converts kohya FLUX LoRAs) — at
``lora_scale``; with a LoRA given, `fit` trains nothing by default. Otherwise
`fit` runs the DermaFlux recipe (below) and trains a LoRA. Memory switches:
``offload=model|sequential|none``, ``vae_tiling``, ``vae_slicing``.

**Fine-tuning (`fit`).** LoRA via peft on the transformer blocks' attention and
projection layers (``rank``/``alpha`` 64/64, ``lora_layers``), flow-matching
loss (x_t = (1−t)·x0 + t·ε, target ε − x0), logit-normal timesteps
(``timesteps=``), FLUX-dev guidance embedding fed ``guidance``, latents and text
embeddings computed once and cached, AdamW, gradient accumulation, bf16 autocast
on CUDA, `accelerate` (``accelerate launch`` for several GPUs), a checkpoint
every ``checkpoint_every`` steps under the plugin's work_dir and resume from the
last one, and the LoRA saved as ``pytorch_lora_weights.safetensors`` (loadable
by ``FluxPipeline.load_lora_weights``). The loop is `diffusion_training`.

**CPU scale (``model=tiny``, the default).** No pretrained tiny FLUX exists
offline, so the honest choice is a small FLUX-architecture pipeline
(`flux_tiny`: a 2.3 M-parameter FluxTransformer2DModel — 2 double-stream + 4
single-stream blocks, width 128 — over 8×8-pixel tokens of a fixed JPEG-like DCT
"autoencoder", with frozen random-init CLIP/T5 encoders as fixed text feature
maps over a word-level caption tokenizer) trained **from scratch,
full-parameter** on the train pool (``train=full``), with a step budget set by
the profile (`trained_generator.TINY_TRAIN_DEFAULTS`). ``train=lora`` on the tiny
model exercises the paper's LoRA path (the tests check it), but a LoRA on a
random base cannot learn lesions in minutes. The trained tiny pipeline is saved as an ordinary FLUX
folder (``model=<that folder>`` loads it).

**Caching.** A fit with the same model, LoRA file, training options and train
pool (hash of every image, label and caption) reuses the weights saved under
``work_dir/fits/<key>/final``; a killed fit resumes from its last checkpoint.
`cache_key(context)` gives the host the model identity (config hash or tiny spec), the
LoRA file's SHA-256, the options resolved for the run (a tiny model's training
budget follows the profile) and the device kind and weights dtype, for its image cache.

**Determinism.** Each prompt gets its own ``torch.Generator`` seeded with
``prompt.seed`` (noise drawn on the CPU), so an image does not depend on its
batch, its position or the device's RNG.

Options (``--generator-opt key=value``; see `DermaFluxGenerator.option_specs`).
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
    from diffusers import FluxPipeline

#: bump when fitting or sampling changes, so cached weights and images are not reused
ALGORITHM_VERSION = "1"

#: LoRA target layers, by module-name suffix inside transformer_blocks / single_transformer_blocks
_ATTENTION = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
)  # fmt: skip
_PROJECTIONS = ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp", "proj_out")
_MODULATION = ("norm1.linear", "norm1_context.linear", "norm.linear")
LORA_LAYERS = {
    "attention": _ATTENTION,
    "blocks": _ATTENTION + _PROJECTIONS,
    "all": _ATTENTION + _PROJECTIONS + _MODULATION,
}

log = logging.getLogger("dermabench.dermaflux")


class DermaFluxGenerator(TrainedGenerator):
    """FLUX + LoRA fine-tuned on captioned lesions; a tiny from-scratch FLUX on CPUs."""

    name = "dermaflux"
    description = "DermaFlux: FLUX.1 (rectified-flow MMDiT) + LoRA on captioned lesions; model=tiny trains on CPU"

    option_specs: ClassVar[dict[str, Option]] = {
        # the model
        "model": Option("str", "tiny", "tiny | micro | a FLUX diffusers folder | a hub id in the HF cache"),
        **WEIGHT_OPTIONS,
        # sampling
        "steps": Option("int", None, "denoising steps (default 28 for guidance-distilled models, 4 otherwise; "
                        "tiny: 12)", min=1, optional=True),
        "guidance": Option("float", 3.5, "embedded guidance of FLUX.1-dev (ignored by models without it)", min=0),
        "shift": Option("float", None, "sampling timestep shift (default: the model's scheduler, FLUX's "
                        "resolution-dependent shift)", min=0, min_inclusive=False, optional=True),
        "cfg": Option("float", 1.0, "true classifier-free guidance scale against an empty caption (1 = off)",
                      min=1),
        "height": Option("int", None, "image height (default: the run's image size for tiny models, 1024 "
                         "otherwise)", min=16, optional=True),
        "width": Option("int", None, "image width (see height)", min=16, optional=True),
        "batch_size": Option("int", None, "images per denoising batch (default 64 tiny, 4 otherwise)", min=1,
                             optional=True),
        "max_sequence_length": Option("int", None, "T5 tokens (default 512; tiny: 16)", min=8,
                                      max=512, optional=True),
        # fitting
        "train": Option("str", "auto", "what fit trains: auto (tiny: full; a LoRA given: none; else lora)",
                        choices=("auto", "none", "lora", "full")),
        "train_steps": Option("int", None, "optimisation steps (default by profile for tiny models; 1000 "
                              "otherwise)", min=1, optional=True),
        **OPTIMISER_OPTIONS,
        "lora_layers": Option("str", "blocks", "LoRA targets: attention, blocks (attention + MLP/projections), "
                              "all (+ modulation)", choices=tuple(LORA_LAYERS)),
        "timesteps": Option("str", "logit_normal", "training timestep sampling",
                            choices=("logit_normal", "mode", "uniform", "sigma_sqrt", "cosmap")),
        "logit_mean": Option("float", 0.0, "mean of the logit-normal timestep density"),
        "logit_std": Option("float", 1.0, "std of the logit-normal timestep density", min=0, min_inclusive=False),
        "caption_dropout": Option("float", 0.0, "share of captions replaced by the empty caption (for cfg)",
                                  min=0, max=1),
        **LOOP_OPTIONS,
    }

    #: the options that change sampling, not the trained weights: a fit's key leaves them out
    sampling_options = ("steps", "shift", "cfg", "batch_size", "offload", "vae_tiling", "vae_slicing", "lora_scale",
                        "checkpoint_every")
    pipe: FluxPipeline | None
    #: fit trains FLUX's transformer; a LoRA file is loaded as adapter "dermaflux"
    trained_component = "transformer"
    adapter = "dermaflux"
    _components = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
    model_folder = "FLUX folder"
    latent_chunk = 4  # a 1024 px FLUX VAE encode is memory-hungry

    # ------------------------------------------------------------------ resolution of options

    def resolved(self, context: dermabench.RunContext | None = None) -> dict[str, Any]:
        """Every option with its effective value (defaults that depend on the model/profile filled in)."""
        c = dict(self.config)
        tiny = self.is_tiny
        if c["steps"] is None:
            c["steps"] = 12 if tiny else (28 if self._guidance_embeds() else 4)
        size = context.image_size if context is not None else 64
        if c["height"] is None:
            c["height"] = size if tiny else 1024
        if c["width"] is None:
            c["width"] = size if tiny else 1024
        if c["batch_size"] is None:
            c["batch_size"] = 64 if tiny else 4
        if c["max_sequence_length"] is None:
            c["max_sequence_length"] = _tiny_spec(c["model"]).max_sequence_length if tiny else 512
        self._resolve_training(c, context.profile if context is not None else "quick")
        return c

    def _guidance_embeds(self) -> bool:
        """Whether the transformer has FLUX.1-dev's guidance embedding (read from its config, nothing loaded)."""
        if self.pipe is not None:
            return bool(self.pipe.transformer.config.guidance_embeds)
        if self.is_tiny:
            return _tiny_spec(self.config["model"]).guidance_embeds
        config = self._model_location() / "transformer" / "config.json"
        try:
            return bool(json.loads(config.read_text()).get("guidance_embeds", False))
        except (OSError, ValueError):
            return True

    # ------------------------------------------------------------------ the model: where, what, how it loads

    def _model_location(self) -> Path:
        """The local folder of a FLUX model: the path itself, or its snapshot in the HF cache. Never downloads."""
        model = self.config["model"]
        return model_location(
            model,
            self.name,
            kind="FLUX",
            holds="transformer/, vae/, text_encoder*/, tokenizer*/",
            offline=f"Download it where there is network (`hf download {model}`, accepting its licence) or pass "
            "model=/path/to/FLUX-folder",
            online=f"Download it first (`hf download {model}`; FLUX.1-dev needs its licence accepted on the hub) "
            "or pass model=/path/to/folder",
        )

    def _tiny_identity(self) -> dict[str, Any]:
        from dermabench_plugins.flux_tiny import TINY_VERSION

        model = self.config["model"]
        return {"tiny": model, "version": TINY_VERSION, "spec": _tiny_spec(model).to_dict()}

    def _key_fields(self) -> dict[str, Any]:
        """What names dermaflux in its fit and image-cache keys (frozen: users' caches are keyed on it)."""
        return {"algorithm": ALGORITHM_VERSION}

    @property
    def _pipeline_class(self):
        from diffusers import FluxPipeline

        return FluxPipeline

    def _build_tiny(self, context: dermabench.RunContext) -> FluxPipeline:
        from dermabench_plugins.flux_tiny import build_tiny_flux

        return build_tiny_flux(_tiny_spec(self.config["model"]), seed=derive_seed(context.seed, "dermaflux"))

    def _from_pretrained(self, folder: Path, dtype) -> FluxPipeline:
        import dermabench_plugins.flux_tiny  # noqa: F401 - a saved tiny DermaFlux names DCTVAE as its VAE
        from diffusers import FluxPipeline

        try:
            with quiet():
                return FluxPipeline.from_pretrained(folder, dtype=dtype, local_files_only=True, use_safetensors=True)
        except (OSError, ValueError) as exc:
            raise DermabenchError(f"generator '{self.name}': cannot load FLUX from {folder}: {exc}") from exc

    def _load_saved_pipeline(self, folder: Path, context: dermabench.RunContext) -> None:
        """A fully trained pipeline, as `_save_trained` wrote it (safetensors only, like every other load)."""
        device, dtype = self._device_dtype(context)
        pipe = self._from_pretrained(folder, dtype)  # safetensors only, like every other load
        pipe.to(device)
        self._setup(pipe)

    # ------------------------------------------------------------------ what sampling FLUX differs in

    def _encode_text(self, pipe, texts: list[str], device, opts) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 sequence embeddings (L×D each) and CLIP pooled ones (P each)."""
        pe, pp, _ = pipe.encode_prompt(
            prompt=texts, prompt_2=None, device=device, max_sequence_length=opts["max_sequence_length"]
        )
        return pe, pp

    def _sampling_setup(self, pipe, opts) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
        """The timestep shift asked for; the empty caption's embeddings when true CFG is on (cfg > 1)."""
        if opts["shift"] is not None:
            from diffusers import FlowMatchEulerDiscreteScheduler

            pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
                pipe.scheduler.config, use_dynamic_shifting=False, shift=opts["shift"]
            )
        return self._encode_prompts([""], opts) if opts["cfg"] > 1 else None

    def _batch_inputs(self, batch, embeds, negative, opts) -> dict[str, Any]:
        import torch

        texts = [p.text for p in batch]
        pe = torch.stack([embeds[t][0] for t in texts])
        pp = torch.stack([embeds[t][1] for t in texts])
        inputs: dict[str, Any] = {
            "prompt_embeds": pe,
            "pooled_prompt_embeds": pp,
            "max_sequence_length": opts["max_sequence_length"],
        }
        if negative is not None:
            inputs["negative_prompt_embeds"] = negative[""][0].expand_as(pe).contiguous()
            inputs["negative_pooled_prompt_embeds"] = negative[""][1].expand_as(pp).contiguous()
            inputs["true_cfg_scale"] = opts["cfg"]
        return inputs

    # ------------------------------------------------------------------ what training FLUX differs in

    def _size_step(self, pipe) -> int:
        return pipe.vae_scale_factor * 2  # FLUX packs 2×2 latent cells into a token

    def _lora_targets(self, transformer, layers: str) -> list[str]:
        import torch

        suffixes = LORA_LAYERS[layers]
        names = []
        for name, module in transformer.named_modules():
            if not isinstance(module, torch.nn.Linear):
                continue
            if not name.startswith(("transformer_blocks.", "single_transformer_blocks.")):
                continue
            if any(name.endswith("." + s) for s in suffixes):
                names.append(name)
        return names

    def _denoiser(self, transformer, pipe, height: int, width: int, opts) -> FluxDenoiser:
        return FluxDenoiser(transformer, height, width, pipe.vae_scale_factor, opts["guidance"])

    def _objective(self, opts):
        from dermabench_plugins.diffusion_training import RectifiedFlow, TimestepSampler

        return RectifiedFlow(TimestepSampler(opts["timesteps"], opts["logit_mean"], opts["logit_std"]))

    def _conditioning(self, captions: list[str], storage, opts) -> tuple[dict, dict]:
        """T5 sequence and CLIP pooled embeddings of the captions, one row per caption on the CPU, and of the
        empty caption (caption dropout)."""
        prompt_embeds, pooled = self._encode_rows(captions, storage, opts)
        empty_embeds, empty_pooled = self._encode_rows([""], storage, opts)
        null = {"prompt_embeds": empty_embeds, "pooled": empty_pooled}
        return {"prompt_embeds": prompt_embeds, "pooled": pooled}, null


# ---------------------------------------------------------------------- the FLUX half of training


class FluxDenoiser:
    """The `diffusion_training.Denoiser` interface for FluxTransformer2DModel (duck-typed, so that importing
    this module does not import torch): latents B×C×h×w are packed 2×2 cells per token, as FluxPipeline does."""

    def __init__(self, transformer, height: int, width: int, vae_scale_factor: int, guidance: float) -> None:
        import torch
        from diffusers import FluxPipeline

        self.module = transformer
        self.height, self.width, self.vae_scale_factor = height, width, vae_scale_factor
        self.guidance = guidance
        self.guidance_embeds = bool(transformer.config.guidance_embeds)
        h, w = height // vae_scale_factor, width // vae_scale_factor
        self.img_ids = FluxPipeline._prepare_latent_image_ids(1, h // 2, w // 2, "cpu", torch.float32)
        self._pack = FluxPipeline._pack_latents
        self._unpack = FluxPipeline._unpack_latents

    def predict(self, module, x_t, model_time, cond):
        import torch

        b, c, h, w = x_t.shape
        tokens = self._pack(x_t, b, c, h, w)
        text = cond["prompt_embeds"]
        dtype = next(p for p in module.parameters()).dtype
        guidance = torch.full((b,), self.guidance, device=x_t.device) if self.guidance_embeds else None
        out = module(
            hidden_states=tokens.to(dtype),
            timestep=model_time.to(dtype),
            guidance=guidance,
            pooled_projections=cond["pooled"].to(dtype),
            encoder_hidden_states=text.to(dtype),
            txt_ids=torch.zeros(text.shape[1], 3, device=x_t.device, dtype=dtype),
            img_ids=self.img_ids.to(x_t.device, dtype),
            return_dict=False,
        )[0]
        return self._unpack(out, self.height, self.width, self.vae_scale_factor)

    def trainable_parameters(self):
        return {n: p for n, p in self.module.named_parameters() if p.requires_grad}

    def no_decay(self, name, param):
        return param.ndim < 2 or "norm" in name


# ---------------------------------------------------------------------- helpers


def _tiny_spec(model: str):
    from dermabench_plugins.flux_tiny import PRESETS

    return PRESETS[model]


@dermabench.hookimpl
def register_generators(register):
    register(DermaFluxGenerator)
