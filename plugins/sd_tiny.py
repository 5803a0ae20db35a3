"""Tiny Stable-Diffusion-architecture pipelines built from configs, fully offline (for CPUs, CI and tests).

`build_tiny_sd(spec, seed)` returns a real `diffusers.StableDiffusionPipeline`
(`xl=True`: a `StableDiffusionXLPipeline`) whose parts have the SD architecture
at a small size, mirroring `flux_tiny` so that the two tiny baselines differ in
the denoiser, the noise schedule and the loss target only:

* `UNet2DConditionModel`: SD's layout (cross-attention down/up blocks at the
  finer levels, plain ResNet blocks at the coarsest, a cross-attention middle
  block, a sinusoidal timestep embedding) at widths 48/64/96 —
  ≈ 2.5 M parameters against DermaFlux-tiny's 2.3 M transformer (the tests hold
  the two within ±25 %). SDXL: the same UNet plus SDXL's `text_time` added
  conditioning (pooled text + size/crop ids).
* `CLIPTextModel` (SDXL: + `CLIPTextModelWithProjection`, whose penultimate
  hidden states are concatenated as in SDXL), randomly initialised from `seed`
  and frozen — the same size as DermaFlux-tiny's CLIP — over the same offline
  word-level caption tokenizer (`flux_tiny.word_tokenizer`).
* `BlockDCTVAE`: DermaFlux-tiny's fixed DCT "autoencoder" (the same opponent
  colours, the same 32 + 8 + 8 low frequencies of each 8×8 block, the same
  train-pool standardisation), laid out for a conv net: one latent cell per
  block with the 48 frequencies as channels (48 × 8 × 8 at 64 px), where FLUX
  gets the same 48 numbers as one token. Same latent information, so the same
  reconstruction ceiling for both models.
* The scheduler: SD's DDPM noise schedule (1000 steps, "scaled_linear" betas
  0.00085 → 0.012) with SD 2.x's v-prediction, sampled with DPM-Solver++ by
  default; "trailing" timestep spacing, so that few-step sampling starts at the
  pure-noise end (SD's "leading" spacing starts 4-step sampling at t = 750).
  Why v and not SD 1.5's ε: trained from scratch at the `quick` budget
  (1000 steps × 16), the ε model sampled saturated noise with every sampler —
  its ε error at t ≈ 1 (MSE 0.21) becomes an x0 error σ/α ≈ 15× larger (x0 MSE
  44) in the first sampling step — while the v model sampled lesion-shaped
  images. `spec_from(..., prediction_type="epsilon")` gives the ε variant.

The pipeline saves with `save_pretrained` and reloads with
`StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)` like any
SD folder (the VAE's class is found through this module's import path).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from dermabench_plugins.flux_tiny import DCTVAE, tiny_clip, word_tokenizer
from diffusers import (
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)

# from_pretrained looks up a component's base class in the module that model_index.json names
# (["dermabench_plugins.sd_tiny", "BlockDCTVAE"]): ModelMixin must be importable from here
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401

__all__ = ["PRESETS", "BlockDCTVAE", "TinySDSpec", "build_tiny_sd", "sd_scheduler_config"]

#: bump when what `build_tiny_sd` makes for a given spec and seed changes (it keys cached weights and images)
TINY_VERSION = "1"


class BlockDCTVAE(DCTVAE):
    """`flux_tiny.DCTVAE` with one latent cell per DCT block: B × (luma + 2·chroma) × H/block × W/block.

    The block is 2·`downscale` pixels, as in DCTVAE; `block_out_channels` tells pipelines that the
    latent is `block` times smaller than the image (SD's `vae_scale_factor`).
    """

    cells_per_block = 1

    def _to_latent(self, coef: torch.Tensor) -> torch.Tensor:
        z = (coef - self.mean.to(coef.dtype)) / self.std.to(coef.dtype)
        return z.permute(0, 3, 1, 2).contiguous()

    def _from_latent(self, z: torch.Tensor) -> torch.Tensor:
        return z.permute(0, 2, 3, 1) * self.std.to(z.dtype) + self.mean.to(z.dtype)


@dataclass(frozen=True)
class TinySDSpec:
    """Sizes of a tiny SD pipeline. Defaults: the `tiny` preset."""

    downscale: int = 4  # DCT blocks of 2·downscale px, one latent cell each
    luma_coefficients: int = 32
    chroma_coefficients: int = 8
    deblock: float = 0.5  # as DermaFlux tiny
    block_out_channels: tuple[int, ...] = (48, 64, 96)
    #: SD's pattern: cross-attention at the finer levels, none at the coarsest
    attention_levels: tuple[bool, ...] = (True, True, False)
    layers_per_block: int = 1
    attention_heads: int = 2
    norm_num_groups: int = 16
    clip_hidden: int = 64  # SDXL: split between its two encoders (cross-attention width stays clip_hidden)
    clip_layers: int = 2
    clip_max_length: int = 64  # ≥ the ≈ 47 word tokens of the longest caption
    addition_time_embed_dim: int = 8  # SDXL only
    prediction_type: str = "v_prediction"  # SD 2.x's; see the module docstring

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["block_out_channels"] = list(self.block_out_channels)
        data["attention_levels"] = list(self.attention_levels)
        return data


PRESETS: dict[str, TinySDSpec] = {
    "tiny": TinySDSpec(),
    # for unit tests: ≈ 60 k parameters (DermaFlux micro: 69 k), milliseconds per step
    "micro": TinySDSpec(
        downscale=2,
        luma_coefficients=10,
        chroma_coefficients=3,
        block_out_channels=(8, 16),
        attention_levels=(True, False),
        attention_heads=1,
        norm_num_groups=4,
        clip_hidden=32,
        clip_layers=1,
    ),
}


def spec_from(preset: str, **overrides: Any) -> TinySDSpec:
    if preset not in PRESETS:
        raise KeyError(preset)
    return replace(PRESETS[preset], **overrides)


def sd_scheduler_config(prediction_type: str = "epsilon") -> dict[str, Any]:
    """SD 1.x's noise schedule (the DDPM betas every SD sampler shares), trailing timestep spacing."""
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": prediction_type,
        "timestep_spacing": "trailing",
        "steps_offset": 1,  # SD's value (the pipeline insists); only "leading" spacing uses it
        "clip_sample": False,
        "set_alpha_to_one": False,
    }


def tiny_unet(spec: TinySDSpec, xl: bool = False) -> UNet2DConditionModel:
    channels = spec.luma_coefficients + 2 * spec.chroma_coefficients
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in spec.attention_levels)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(spec.attention_levels))
    extra: dict[str, Any] = {}
    if xl:
        pooled = spec.clip_hidden // 2  # text_encoder_2's projection
        extra = {
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": spec.addition_time_embed_dim,
            "projection_class_embeddings_input_dim": 6 * spec.addition_time_embed_dim + pooled,
        }
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(spec.block_out_channels),
        down_block_types=down,
        up_block_types=up,
        layers_per_block=spec.layers_per_block,
        cross_attention_dim=spec.clip_hidden,
        attention_head_dim=spec.attention_heads,  # diffusers' legacy name: the number of heads
        norm_num_groups=spec.norm_num_groups,
        **extra,
    )


def build_tiny_sd(spec: TinySDSpec | None = None, seed: int = 0, xl: bool = False):
    """A StableDiffusion(XL)Pipeline with a randomly initialised tiny UNet and text encoder(s), in eval mode.

    Deterministic: the same spec and seed give bit-identical weights (on one torch version).
    The global torch RNG is left untouched.
    """
    spec = spec or TinySDSpec()
    if len(spec.block_out_channels) != len(spec.attention_levels):
        raise ValueError(f"one attention flag per UNet level, got {spec}")
    vae = BlockDCTVAE(spec.downscale, spec.luma_coefficients, spec.chroma_coefficients, deblock=spec.deblock)
    scheduler = DPMSolverMultistepScheduler.from_config(
        sd_scheduler_config(spec.prediction_type), algorithm_type="dpmsolver++", solver_order=2
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = tiny_unet(spec, xl)
        if xl:
            tok, tok_2 = word_tokenizer(spec.clip_max_length, bos=True), word_tokenizer(spec.clip_max_length, bos=True)
            half = spec.clip_hidden // 2
            clip = tiny_clip(tok, half, spec.clip_layers)
            clip_2 = tiny_clip(tok_2, half, spec.clip_layers, with_projection=True)
        else:
            tok = word_tokenizer(spec.clip_max_length, bos=True)
            clip = tiny_clip(tok, spec.clip_hidden, spec.clip_layers)
    if xl:
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=clip, text_encoder_2=clip_2, tokenizer=tok,
                                         tokenizer_2=tok_2, unet=unet, scheduler=scheduler,
                                         force_zeros_for_empty_prompt=True, add_watermarker=False)
        encoders = (clip, clip_2)
    else:
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=clip, tokenizer=tok, unet=unet, scheduler=scheduler,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        encoders = (clip,)
    for module in (unet, vae, *encoders):
        module.eval()  # built from configs they start in train mode (dropout on)
    for encoder in encoders:
        encoder.requires_grad_(False)
    return pipe
