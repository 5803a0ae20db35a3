"""Tiny FLUX-architecture pipelines built from configs, fully offline (for CPUs, CI and tests).

`build_tiny_flux(spec, seed)` returns a real `diffusers.FluxPipeline` whose parts
have the FLUX.1 architecture at a small size:

* `FluxTransformer2DModel`: an MMDiT with double-stream (text | image) and
  single-stream blocks, rotary positions over (text, row, column) ids, and a
  pooled-text + timestep (+ guidance for dev-style models) modulation vector.
* `CLIPTextModel` (pooled projection) and `T5EncoderModel` (per-token context)
  text encoders, randomly initialised from `seed` and kept frozen: with no
  pretrained tiny encoders available offline they act as fixed random feature
  maps of the tokens, which the transformer learns to read.
* Tokenizers made without files: a `tokenizers` word-level tokenizer over the
  dermatology caption vocabulary (`CAPTION_WORDS` and numbers; punctuation and
  function words are normalised away, anything else is `<unk>`), used for both
  encoders. FLUX has no text attention mask, so every padded T5 position costs
  as much as an image token: word tokens keep a DermaFlux caption at ≈ 37
  tokens (max ≈ 47) where a character or sub-word vocabulary needs 60–80+.
* `DCTVAE` instead of an `AutoencoderKL`: a fixed JPEG-like transform (opponent
  colours, 8×8 block DCT, the 32 + 8 + 8 lowest frequencies, standardised per
  coefficient on the train pool, one common scale). FluxPipeline packs 2×2 latent cells per token,
  arranged so that one token is one 8×8-pixel block: 64 tokens at 64 px, 48
  values each. A learned autoencoder would first have to be trained from scratch
  (minutes we do not have); raw pixel patches (192 values per token, wider than
  the transformer) leave the samples full of noise; the DCT keeps ≈ 36 dB PSNR.

The pipeline saves with `save_pretrained` and reloads with
`FluxPipeline.from_pretrained(folder, local_files_only=True)` like any FLUX
folder (the VAE's class is found through this module's import path).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_utils import ModelMixin

__all__ = [
    "CAPTION_WORDS",
    "DCTVAE",
    "PRESETS",
    "TinyFluxSpec",
    "build_tiny_flux",
    "tiny_clip",
    "word_tokenizer",
]

#: bump when what `build_tiny_flux` makes for a given spec and seed changes (it keys cached weights and images)
TINY_VERSION = "2"

#: words of the `template` and `abcd` captions (and common dermatology terms): one T5 token each
CAPTION_WORDS = (
    "this", "photo", "depicts", "a", "an", "the", "of", "on", "in", "with", "and", "or", "to", "is", "are",
    "at", "about", "by", "for", "from", "its", "benign", "malignant", "lesion", "mole", "here", "s",
    "description", "skin", "type", "fitzpatrick", "patient", "aged", "year", "old", "male", "female", "located",
    "trunk", "back", "abdomen", "chest", "neck", "scalp", "face", "acral", "lower", "upper", "extremity",
    "hand", "foot", "arm", "leg", "ear", "genital", "oral", "nail", "palms", "soles", "unknown", "asymmetric",
    "symmetric", "roughly", "slightly", "asymmetry", "axis", "axes", "both", "one", "two", "three", "four",
    "five", "six", "irregular", "regular", "smooth", "notched", "ragged", "border", "shape", "outline",
    "colour", "colours", "color", "colors", "light", "dark", "brown", "black", "blue", "grey", "gray", "red",
    "white", "pink", "tan", "structures", "structure", "pigment", "network", "atypical", "typical", "dots",
    "globules", "streaks", "structureless", "areas", "regression", "area", "vessels", "veil", "diameter", "mm",
    "frame", "across", "tenth", "eighth", "sixth", "fifth", "quarter", "third", "half", "thirds", "quarters",
    "fifths", "nearly", "all", "melanoma", "nevus", "naevus", "basal", "cell", "carcinoma", "actinic",
    "keratosis", "bowen", "seborrheic", "dermatofibroma", "vascular", "dermoscopy", "dermoscopic", "clinical",
    "image", "picture", "close", "up",
)  # fmt: skip


#: function words dropped by the tiny tokenizers' normaliser (with punctuation): captions shrink to ≈ 37 tokens
STOP_WORDS = (
    "a", "an", "the", "of", "s", "this", "here", "and", "with", "in", "on", "is", "are", "its", "at", "by",
    "for", "from", "to", "or",
)  # fmt: skip


def word_tokenizer(max_length: int, bos: bool = False):
    """A word-level `tokenizers` tokenizer for the caption vocabulary, as a transformers fast tokenizer.

    Normaliser: NFKC, lower case, punctuation → space, `STOP_WORDS` removed; then one token per
    word of `CAPTION_WORDS` or number 0–120, `<unk>` for anything else, `</s>` appended (and `<s>`
    prepended when `bos`, for CLIP, whose pooled output is the hidden state at the first `</s>`).
    Saved with the pipeline as tokenizer.json, so a reloaded pipeline tokenizes identically.
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "<s>": 3}
    for word in (*CAPTION_WORDS, *map(str, range(121))):
        if word not in vocab and word not in STOP_WORDS:
            vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.NFKC(),
            normalizers.Lowercase(),
            normalizers.Replace(Regex(r"[^a-z0-9]+"), " "),
            normalizers.Replace(Regex(r"\b(?:{})\b".format("|".join(STOP_WORDS))), " "),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    single = "<s> $A </s>" if bos else "$A </s>"
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=[("<s>", 3), ("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        bos_token="<s>",
        model_max_length=max_length,
    )


def tiny_clip(tokenizer, hidden: int, layers: int, with_projection: bool = False):
    """A randomly initialised CLIP text encoder over `tokenizer` (from the global RNG: call it seeded).
    `with_projection`: CLIPTextModelWithProjection, SDXL's second encoder."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 32),
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="quick_gelu",
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


class _PixelLatent:
    """The 'posterior' of a deterministic encoder: sample() and mode() are the latent itself."""

    def __init__(self, latent: torch.Tensor) -> None:
        self.latent = latent

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.latent

    def mode(self) -> torch.Tensor:
        return self.latent


class _EncoderOutput:
    def __init__(self, latent: torch.Tensor) -> None:
        self.latent_dist = _PixelLatent(latent)


def _dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix (rows = frequencies)."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    m = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m.float()


def _low_frequencies(block: int, count: int) -> list[int]:
    """The `count` lowest DCT frequencies of a block (flattened u·block + v), by u + v; ties in (v, u) pairs,
    so that the set is closed under transposition and sign flips (image flips and quarter turns)."""
    order = sorted(((u, v) for u in range(block) for v in range(block)), key=lambda f: (f[0] + f[1], min(f), f))
    chosen = order[:count]
    if set(chosen) != {(v, u) for u, v in chosen}:
        raise ValueError(f"{count} coefficients of a {block}×{block} DCT do not make a transpose-closed set")
    return [u * block + v for u, v in chosen]


# an orthonormal opponent-colour transform: luma, red-green, yellow-blue
_COLOUR = torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, 0.0], [1.0, 1.0, -2.0]])
_COLOUR = _COLOUR / _COLOUR.norm(dim=1, keepdim=True)


class DCTVAE(ModelMixin, ConfigMixin):
    """A fixed, JPEG-like "autoencoder" behind the AutoencoderKL interface FluxPipeline uses.

    encode: image in [-1, 1] → opponent colours (luma, 2 chroma; orthonormal) → blocks of
    2·downscale pixels → orthonormal 2-D DCT → the `luma_coefficients` / `chroma_coefficients`
    lowest frequencies of each block (centred and scaled with the `mean`/`std` buffers, set from the
    train pool by `fit_normalization`) → arranged as `latent_channels` × 2 × 2 latent cells per block,
    so that FluxPipeline's 2×2 packing makes exactly one token per block. decode: the inverse
    (dropped frequencies are 0), optionally `deblock`ed (the two pixels at each block edge are blended
    towards a [1, 2, 1] smoothing, as JPEG decoders do), clamped to [-1, 1]. Nothing is learned.

    Why: a token of raw pixels (8×8×3 = 192 values) is wider than a small transformer's hidden
    state, so it cannot even pass the noise through and its velocity predictions stay noisy (seen:
    FID ≈ 900 after 600 steps); 48 low frequencies keep the image at ≈ 36 dB PSNR on the phantom
    lesions with 4× narrower tokens. `block_out_channels` only tells pipelines the downscale
    (2 ** (len − 1)).
    """

    _supports_gradient_checkpointing = False
    #: latent cells along a block's side: 2, so that FluxPipeline's 2×2 packing makes one token per block
    #: (`sd_tiny.BlockDCTVAE`: 1, one cell per block for a conv net)
    cells_per_block: ClassVar[int] = 2

    @register_to_config
    def __init__(
        self,
        downscale: int = 4,
        luma_coefficients: int = 32,
        chroma_coefficients: int = 8,
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
        latent_channels: int | None = None,
        block_out_channels: tuple[int, ...] | None = None,
        deblock: float = 0.0,
    ) -> None:
        super().__init__()
        if downscale < 1 or downscale & (downscale - 1):
            raise ValueError(f"downscale must be a power of two, got {downscale}")
        block = 2 * downscale
        count = luma_coefficients + 2 * chroma_coefficients
        if count % 4:
            raise ValueError(f"luma + 2 × chroma coefficients must be a multiple of 4, got {count}")
        cells = self.cells_per_block
        self.register_to_config(
            latent_channels=count // cells**2, block_out_channels=[3] * (int(math.log2(block // cells)) + 1)
        )
        self.block = block
        self.register_buffer("dct", _dct_matrix(block), persistent=False)
        self.register_buffer("colour", _COLOUR.clone(), persistent=False)
        self.register_buffer("luma_index", torch.tensor(_low_frequencies(block, luma_coefficients)), persistent=False)
        self.register_buffer(
            "chroma_index", torch.tensor(_low_frequencies(block, chroma_coefficients)), persistent=False
        )
        # per-coefficient standardisation (saved with the model)
        self.register_buffer("mean", torch.zeros(count))
        self.register_buffer("std", torch.ones(count))

    def enable_slicing(self) -> None:  # FluxPipeline's memory switches: nothing to slice or tile here
        pass

    def disable_slicing(self) -> None:
        pass

    def enable_tiling(self, *args: Any, **kwargs: Any) -> None:
        pass

    def disable_tiling(self) -> None:
        pass

    def _coefficients(self, x: torch.Tensor) -> torch.Tensor:
        """B×3×H×W → B×hb×wb×count raw (unstandardised) coefficients."""
        b, _, h, w = x.shape
        n = self.block
        ycc = torch.einsum("dc,bchw->bdhw", self.colour.to(x.dtype), x)
        blocks = ycc.reshape(b, 3, h // n, n, w // n, n).permute(0, 1, 2, 4, 3, 5)  # b,3,hb,wb,n,n
        dct = self.dct.to(x.dtype)
        coef = (dct @ blocks @ dct.T).flatten(-2)  # b,3,hb,wb,n*n
        luma = coef[:, 0][..., self.luma_index]
        chroma = coef[:, 1:][..., self.chroma_index]  # b,2,hb,wb,k
        return torch.cat([luma, chroma[:, 0], chroma[:, 1]], dim=-1)

    def _image(self, coef: torch.Tensor) -> torch.Tensor:
        """B×hb×wb×count raw coefficients → B×3×H×W."""
        b, hb, wb, _ = coef.shape
        n = self.block
        kl, kc = len(self.luma_index), len(self.chroma_index)
        full = coef.new_zeros(b, 3, hb, wb, n * n)
        full[:, 0, ..., self.luma_index] = coef[..., :kl]
        full[:, 1, ..., self.chroma_index] = coef[..., kl : kl + kc]
        full[:, 2, ..., self.chroma_index] = coef[..., kl + kc :]
        dct = self.dct.to(coef.dtype)
        blocks = dct.T @ full.reshape(b, 3, hb, wb, n, n) @ dct
        ycc = blocks.permute(0, 1, 2, 4, 3, 5).reshape(b, 3, hb * n, wb * n)
        return torch.einsum("dc,bdhw->bchw", self.colour.to(coef.dtype), ycc)

    def _to_latent(self, coef: torch.Tensor) -> torch.Tensor:
        b, hb, wb, k = coef.shape
        z = (coef - self.mean.to(coef.dtype)) / self.std.to(coef.dtype)
        return z.reshape(b, hb, wb, k // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, k // 4, 2 * hb, 2 * wb)

    def _from_latent(self, z: torch.Tensor) -> torch.Tensor:
        b, c, h2, w2 = z.shape
        coef = z.reshape(b, c, h2 // 2, 2, w2 // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h2 // 2, w2 // 2, 4 * c)
        return coef * self.std.to(z.dtype) + self.mean.to(z.dtype)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        latent = self._to_latent(self._coefficients(x))
        return _EncoderOutput(latent) if return_dict else (_PixelLatent(latent),)

    def _deblock(self, image: torch.Tensor, strength: float) -> torch.Tensor:
        """JPEG-style deblocking: blend the two pixels on each side of a block edge towards their 1-D
        neighbourhood mean ([1, 2, 1] / 4 across the edge), by `strength` in [0, 1]."""
        n = self.block
        out = image
        for dim in (3, 2):  # across vertical edges (columns), then horizontal ones (rows)
            size = out.shape[dim]
            pos = torch.arange(size, device=out.device) % n
            edge = ((pos == 0) | (pos == n - 1)).to(out.dtype) * strength
            edge[0] = edge[-1] = 0.0  # the image border is no block edge
            pad = torch.nn.functional.pad(out, (1, 1, 0, 0) if dim == 3 else (0, 0, 1, 1), mode="replicate")
            left = pad.narrow(dim, 0, size)
            right = pad.narrow(dim, 2, size)
            smooth = (left + 2 * out + right) / 4
            shape = [1, 1, 1, 1]
            shape[dim] = size
            w = edge.reshape(shape)
            out = out * (1 - w) + smooth * w
        return out

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        image = self._image(self._from_latent(z))
        if self.config.deblock > 0:
            image = self._deblock(image, float(self.config.deblock))
        image = image.clamp(-1.0, 1.0)
        return DecoderOutput(sample=image) if return_dict else (image,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x).latent_dist.mode()).sample

    def is_normalized(self) -> bool:
        """Whether `fit_normalization` has set the statistics (a fresh DCTVAE has mean 0 and std 1: identity)."""
        return not (bool((self.mean == 0).all()) and bool((self.std == 1).all()))

    @torch.no_grad()
    def fit_normalization(self, images: torch.Tensor) -> None:
        """Centre each frequency on its train-pool mean and divide all by one common std (images in [-1, 1]).

        One scale for every frequency keeps the DCT orthonormal, so the flow-matching loss stays a pixel-space
        MSE: coarse structure carries most of the signal and the loss. (Per-frequency whitening weighs each
        of the 48 frequencies equally; after 400 steps its samples were a patchwork of unrelated blocks.)
        """
        coef = torch.cat([self._coefficients(images[i : i + 256]).flatten(0, 2) for i in range(0, len(images), 256)])
        self.mean.copy_(coef.mean(0))
        self.std.fill_(float((coef - self.mean).pow(2).mean().sqrt().clamp_min(1e-6)))

    def augment(self, z: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random flips / quarter turns of latents as images. A block-DCT latent does not flip with the
        image, so decode, flip, encode: exact, as the kept frequencies are closed under flips and turns."""
        from dermabench_plugins.diffusion_training import dihedral_augment

        pixels = self._image(self._from_latent(z))
        return self._to_latent(self._coefficients(dihedral_augment(pixels, generator)))


@dataclass(frozen=True)
class TinyFluxSpec:
    """Sizes of a tiny FLUX pipeline. Defaults: the `tiny` preset."""

    downscale: int = 4  # latent cells are downscale px; a token (2×2 cells) is one 2·downscale px DCT block
    luma_coefficients: int = 32  # of 64 per 8×8 block
    chroma_coefficients: int = 8  # per chroma channel
    deblock: float = 0.5  # decoder smoothing across block edges (0 = exact inverse DCT)
    num_layers: int = 2  # double-stream (MMDiT) blocks
    num_single_layers: int = 4  # single-stream blocks
    num_attention_heads: int = 4
    attention_head_dim: int = 32
    axes_dims_rope: tuple[int, int, int] = (8, 12, 12)
    guidance_embeds: bool = False  # True gives a dev-style (guidance-distilled) interface
    t5_d_model: int = 64
    t5_layers: int = 2
    clip_hidden: int = 64
    clip_layers: int = 2
    #: T5 tokens. FLUX has no text attention mask: every T5 position costs as much as an image token. 16 word
    #: tokens hold the class, skin type, age, sex and site of a DermaFlux caption; CLIP's pooled vector
    #: (clip_max_length, ≥ the ≈ 47 tokens of the longest caption) summarises all of it. Measured at the quick
    #: budget: 16 tokens and 1100 steps beat 48 tokens and 800 steps (FID 766 vs 789, class probe AUC 0.60 vs
    #: 0.54) and sample 1.6× faster.
    max_sequence_length: int = 16
    clip_max_length: int = 64

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["axes_dims_rope"] = list(self.axes_dims_rope)
        return data


PRESETS: dict[str, TinyFluxSpec] = {
    "tiny": TinyFluxSpec(),
    # for unit tests: a few hundred thousand parameters, milliseconds per step
    "micro": TinyFluxSpec(
        downscale=2,
        luma_coefficients=10,
        chroma_coefficients=3,
        num_layers=1,
        num_single_layers=1,
        num_attention_heads=2,
        attention_head_dim=16,
        axes_dims_rope=(4, 6, 6),
        t5_d_model=32,
        t5_layers=1,
        clip_hidden=32,
        clip_layers=1,
        max_sequence_length=16,
    ),
}


def spec_from(preset: str, **overrides: Any) -> TinyFluxSpec:
    if preset not in PRESETS:
        raise KeyError(preset)
    return replace(PRESETS[preset], **overrides)


def _flux_scheduler() -> FlowMatchEulerDiscreteScheduler:
    # FLUX.1's scheduler config (dynamic shifting by image sequence length)
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )


def build_tiny_flux(spec: TinyFluxSpec | None = None, seed: int = 0) -> FluxPipeline:
    """A FluxPipeline with a randomly initialised tiny transformer and text encoders, in eval mode.

    Deterministic: the same spec and seed give bit-identical weights (on one torch version).
    The global torch RNG is left untouched.
    """
    from transformers import T5Config, T5EncoderModel

    spec = spec or TinyFluxSpec()
    if sum(spec.axes_dims_rope) != spec.attention_head_dim:
        raise ValueError(f"sum(axes_dims_rope) must equal attention_head_dim, got {spec}")
    tok_t5 = word_tokenizer(spec.max_sequence_length)
    tok_clip = word_tokenizer(spec.clip_max_length, bos=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=spec.luma_coefficients + 2 * spec.chroma_coefficients,
            num_layers=spec.num_layers,
            num_single_layers=spec.num_single_layers,
            attention_head_dim=spec.attention_head_dim,
            num_attention_heads=spec.num_attention_heads,
            joint_attention_dim=spec.t5_d_model,
            pooled_projection_dim=spec.clip_hidden,
            guidance_embeds=spec.guidance_embeds,
            axes_dims_rope=tuple(spec.axes_dims_rope),
        )
        clip = tiny_clip(tok_clip, spec.clip_hidden, spec.clip_layers)
        t5 = T5EncoderModel(
            T5Config(
                vocab_size=len(tok_t5),
                d_model=spec.t5_d_model,
                d_kv=16,
                d_ff=spec.t5_d_model * 2,
                num_layers=spec.t5_layers,
                num_heads=max(1, spec.t5_d_model // 16),
                relative_attention_num_buckets=16,
                relative_attention_max_distance=64,
                feed_forward_proj="gated-gelu",
                dropout_rate=0.0,
                is_encoder_decoder=False,
                use_cache=False,
                pad_token_id=tok_t5.pad_token_id,
                eos_token_id=tok_t5.eos_token_id,
            )
        )
    vae = DCTVAE(spec.downscale, spec.luma_coefficients, spec.chroma_coefficients, deblock=spec.deblock)
    pipe = FluxPipeline(
        scheduler=_flux_scheduler(),
        vae=vae,
        text_encoder=clip,
        tokenizer=tok_clip,
        text_encoder_2=t5,
        tokenizer_2=tok_t5,
        transformer=transformer,
    )
    for module in (transformer, clip, t5, vae):
        module.eval()  # built from configs they start in train mode (dropout on)
    clip.requires_grad_(False)
    t5.requires_grad_(False)
    return pipe


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
