"""The `dermaflux` generator (FLUX + LoRA) on tiny FLUX models built offline, and the shared training loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dermabench_plugins import dermaflux
from dermabench_plugins.dermaflux import DermaFluxGenerator, FluxDenoiser
from dermabench_plugins.diffusion_training import (
    DDPMObjective,
    RectifiedFlow,
    TimestepSampler,
    TrainConfig,
    TrainingSet,
    train,
)
from dermabench_plugins.flux_tiny import PRESETS, build_tiny_flux, word_tokenizer
from dermabench_plugins.model_files import LORA_FILE
from trained_generators import MICRO, SIZE, arrays, ctx, eval_loss, lesion, lesion_pool, prompts

from dermabench.errors import DermabenchError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pool():
    return lesion_pool()


# --------------------------------------------------------------------------- plugin basics


def test_registered_and_options_validated():
    found = []
    dermaflux.register_generators(register=found.append)
    assert found == [DermaFluxGenerator] and DermaFluxGenerator.name == "dermaflux"
    with pytest.raises(DermabenchError, match="unknown option 'stepz'.*Did you mean 'steps'"):
        DermaFluxGenerator(stepz=3)
    with pytest.raises(DermabenchError, match="offload"):
        DermaFluxGenerator(offload="sideways")
    gen = DermaFluxGenerator(steps="7", lora_scale="0.5", vae_tiling="true")
    assert gen.config["steps"] == 7 and gen.config["lora_scale"] == 0.5 and gen.config["vae_tiling"] is True
    assert gen.train_mode == "full"  # tiny models train from scratch by default


def test_generation_is_deterministic_per_seed_and_batch_independent(tmp_path):
    ps = prompts(6)
    a = arrays(DermaFluxGenerator(train="none", **{**MICRO, "batch_size": "6"}).generate(ps, ctx(tmp_path)))
    b = arrays(DermaFluxGenerator(train="none", **{**MICRO, "batch_size": "1"}).generate(ps, ctx(tmp_path)))
    c = arrays(DermaFluxGenerator(train="none", **{**MICRO, "batch_size": "4"}).generate(ps[::-1], ctx(tmp_path)))
    assert np.abs(a - b).max() <= 1 and np.abs(a - c[::-1]).max() <= 1  # float rounding at most one grey level
    assert np.mean(a != b) < 0.01
    other = arrays(DermaFluxGenerator(train="none", **MICRO).generate(prompts(6, seed0=5), ctx(tmp_path)))
    assert np.abs(a - other).mean() > 5  # another seed, another image


# --------------------------------------------------------------------------- loading full-size models


def test_missing_offline_model_fails_fast_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(DermabenchError, match="black-forest-labs/FLUX.1-dev.*not in the Hugging Face cache"):
        DermaFluxGenerator(model="black-forest-labs/FLUX.1-dev")
    with pytest.raises(DermabenchError, match="model folder not found: .*no/such/flux"):
        DermaFluxGenerator(model=str(tmp_path / "no" / "such" / "flux"))
    (tmp_path / "not-flux").mkdir()
    with pytest.raises(DermabenchError, match="no model_index.json"):
        DermaFluxGenerator(model=str(tmp_path / "not-flux"))


def test_a_saved_tiny_pipeline_loads_as_a_flux_folder(tmp_path):
    pipe = build_tiny_flux(PRESETS["micro"], seed=3)
    pipe.save_pretrained(tmp_path / "flux")
    opts = {"steps": "3", "height": str(SIZE), "width": str(SIZE), "batch_size": "4"}
    gen = DermaFluxGenerator(model=str(tmp_path / "flux"), train="none", **opts)
    assert gen.model_identity()["model"] == str(tmp_path / "flux")
    out = gen.generate(prompts(2), ctx(tmp_path))
    assert [im.size for im in out] == [(SIZE, SIZE)] * 2
    key = gen.cache_key()
    assert key["model"]["files"] and key["lora"] is None and key["options"]["steps"] == 3


# --------------------------------------------------------------------------- LoRA


def fit_lora(tmp_path, pool, **extra):
    gen = DermaFluxGenerator(train="lora", rank="4", alpha="8", train_steps="4", train_batch_size="4", lr="1e-2",
                             **MICRO, **extra)
    gen.fit(pool, ctx(tmp_path))
    return gen


def test_lora_fit_save_and_load_round_trip_reproduces_images(tmp_path, pool):
    gen = fit_lora(tmp_path / "work", pool)
    ps = prompts(4)
    trained = arrays(gen.generate(ps, ctx(tmp_path / "work")))
    saved = next((tmp_path / "work" / "fits").glob("*/final")) / LORA_FILE
    assert saved.is_file()
    from safetensors.torch import load_file

    keys = list(load_file(str(saved)))
    assert keys and all(k.startswith("transformer.") and "lora_" in k for k in keys)
    # the base alone gives other images: the LoRA changed something
    base = arrays(DermaFluxGenerator(train="none", **MICRO).generate(ps, ctx(tmp_path / "base")))
    assert np.abs(base - trained).mean() > 1
    # a fresh generator loading the saved file (train=none) reproduces the images exactly
    assert (saved.parent / "vae.safetensors").is_file()  # tiny: the DCT's train-pool standardisation
    loaded = DermaFluxGenerator(train="none", lora=str(saved), **MICRO)
    loaded.fit(pool, ctx(tmp_path / "other"))
    assert np.array_equal(arrays(loaded.generate(ps, ctx(tmp_path / "other"))), trained)
    # and a second fit with the same pool and options reuses the saved weights
    again = fit_lora(tmp_path / "work", pool)
    assert again.last_fit["reused"] is True
    assert np.array_equal(arrays(again.generate(ps, ctx(tmp_path / "work"))), trained)


def kohya_lora(transformer, rank=4, seed=0) -> dict[str, torch.Tensor]:
    """A kohya sd-scripts FLUX LoRA for this transformer (the released DermaFlux LoRA's key style)."""
    g = torch.Generator().manual_seed(seed)
    dim = transformer.inner_dim
    mlp = transformer.transformer_blocks[0].ff.net[0].proj.out_features
    shapes = {  # kohya module -> (in, out)
        "double_blocks_0_img_attn_qkv": (dim, 3 * dim),
        "double_blocks_0_img_attn_proj": (dim, dim),
        "double_blocks_0_img_mlp_0": (dim, mlp),
        "double_blocks_0_img_mlp_2": (mlp, dim),
        "double_blocks_0_txt_attn_qkv": (dim, 3 * dim),
        "double_blocks_0_txt_attn_proj": (dim, dim),
        # single_blocks linear1 is left out: diffusers splits it with FLUX.1's fixed sizes (3072, 12288)
        "single_blocks_0_linear2": (dim + transformer.single_transformer_blocks[0].mlp_hidden_dim, dim),
    }
    sd = {}
    for name, (n_in, n_out) in shapes.items():
        sd[f"lora_unet_{name}.lora_down.weight"] = torch.randn(rank, n_in, generator=g) * 0.3
        sd[f"lora_unet_{name}.lora_up.weight"] = torch.randn(n_out, rank, generator=g) * 0.3
        sd[f"lora_unet_{name}.alpha"] = torch.tensor(float(rank))
    return sd


def test_kohya_format_lora_loads_and_changes_the_output(tmp_path):
    from safetensors.torch import save_file

    base_gen = DermaFluxGenerator(train="none", **MICRO)
    ps = prompts(3)
    base = arrays(base_gen.generate(ps, ctx(tmp_path)))
    path = tmp_path / "flux_lora_kohya.safetensors"
    save_file(kohya_lora(base_gen.pipe.transformer), str(path))
    gen = DermaFluxGenerator(lora=str(path), **MICRO)
    assert gen.train_mode == "none"  # a given LoRA is used as is
    gen.fit([], ctx(tmp_path))
    lora_images = arrays(gen.generate(ps, ctx(tmp_path)))
    assert np.abs(lora_images - base).mean() > 1
    # every kohya module became a peft LoRA layer (q/k/v split out of qkv)
    names = {n for n, _ in gen.pipe.transformer.named_modules() if n.endswith("lora_A.dermaflux")}
    assert "transformer_blocks.0.attn.to_q.lora_A.dermaflux" in names
    assert "transformer_blocks.0.attn.add_v_proj.lora_A.dermaflux" in names
    assert "single_transformer_blocks.0.proj_out.lora_A.dermaflux" in names
    # lora_scale=0 switches it off again
    off = DermaFluxGenerator(lora=str(path), lora_scale="0", **MICRO)
    off.fit([], ctx(tmp_path))
    assert np.array_equal(arrays(off.generate(ps, ctx(tmp_path))), base)
    # the LoRA file is part of the image-cache key
    assert gen.cache_key()["lora"] != DermaFluxGenerator(**MICRO).cache_key()["lora"]
    with pytest.raises(DermabenchError, match="train=none"):
        DermaFluxGenerator(lora=str(path), train="lora", **MICRO)


# --------------------------------------------------------------------------- the training loop


def micro_training_set(pipe, n=4):
    x = torch.stack([torch.from_numpy(np.array(lesion(i % 2, i))).permute(2, 0, 1) for i in range(n)])
    latents = pipe.vae.encode(x.float() / 127.5 - 1).latent_dist.mode()
    with torch.no_grad():
        pe, pooled, _ = pipe.encode_prompt(prompt=[f"a {'benign' if i % 2 == 0 else 'malignant'} lesion" for i in range(n)],
                                           prompt_2=None, max_sequence_length=16)
    return TrainingSet(latents * 2, {"prompt_embeds": pe, "pooled": pooled})


def test_flow_matching_fit_lowers_the_loss_on_a_fixed_batch():
    pipe = build_tiny_flux(PRESETS["micro"], seed=0)
    data = micro_training_set(pipe)
    tr = pipe.transformer.requires_grad_(True)
    denoiser = FluxDenoiser(tr, SIZE, SIZE, pipe.vae_scale_factor, guidance=3.5)
    objective = RectifiedFlow(TimestepSampler("logit_normal"))
    before = eval_loss(denoiser, data, objective)
    result = train(denoiser, data, objective, TrainConfig(steps=60, batch_size=4, lr=3e-3, flip=False,
                                                          checkpoint_every=0))
    after = eval_loss(denoiser.__class__(tr.eval(), SIZE, SIZE, pipe.vae_scale_factor, 3.5), data, objective)
    assert result.finished and len(result.losses) == 60
    assert after < 0.6 * before, (before, after)
    assert np.mean(result.losses[-10:]) < np.mean(result.losses[:10])


def test_objectives():
    x0, noise = torch.ones(2, 3, 4, 4), torch.full((2, 3, 4, 4), -2.0)
    rf = RectifiedFlow()
    t = torch.tensor([0.0, 1.0])
    xt = rf.noisy_input(x0, noise, t)
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[1], noise[1])
    assert torch.equal(rf.target(x0, noise, t), noise - x0)
    s = TimestepSampler("logit_normal").sample(4000, torch.Generator().manual_seed(0))
    assert 0 < s.min() and s.max() < 1 and abs(float(s.mean()) - 0.5) < 0.02 and float(s.std()) < 0.25
    from diffusers import DDPMScheduler

    ddpm = DDPMObjective(DDPMScheduler().alphas_cumprod, "v_prediction")
    assert ddpm.model_time(torch.tensor([0.0, 0.9999])).tolist() == [0, 999]
    xt = ddpm.noisy_input(x0, noise, torch.tensor([0.0, 0.0]))
    assert torch.allclose(xt, x0, atol=0.05)


def test_full_fit_is_cached_by_train_pool_and_options(tmp_path, pool):
    opts = dict(train_steps="3", train_batch_size="4", **MICRO)
    first = DermaFluxGenerator(**opts)
    first.fit(pool, ctx(tmp_path))
    assert first.last_fit["reused"] is False and first.last_fit["steps"] == 3
    final = next((tmp_path / "fits").glob("*/final"))
    assert (final / "model_index.json").is_file()  # the trained tiny model is an ordinary FLUX folder
    again = DermaFluxGenerator(**opts)
    again.fit(pool, ctx(tmp_path))
    assert again.last_fit["reused"] is True
    ps = prompts(2)
    assert np.array_equal(arrays(first.generate(ps, ctx(tmp_path))), arrays(again.generate(ps, ctx(tmp_path))))
    other_pool = DermaFluxGenerator(**opts)
    other_pool.fit(pool[:-1], ctx(tmp_path))
    other_lr = DermaFluxGenerator(lr="5e-4", **opts)
    other_lr.fit(pool, ctx(tmp_path))
    assert other_pool.last_fit["reused"] is False and other_lr.last_fit["reused"] is False
    assert len(list((tmp_path / "fits").glob("*/final"))) == 3
    assert DermaFluxGenerator(**opts).cache_key() != DermaFluxGenerator(**{**opts, "steps": "4"}).cache_key()


def test_word_tokenizer_keeps_captions_short_and_round_trips(tmp_path):
    tok = word_tokenizer(48)
    caption = ("This photo depicts a malignant lesion. Here's a description of the mole: asymmetric shape, "
               "colours light brown, dark brown, blue-grey, structures dots/globules, diameter about 11 mm.")
    tokens = tok.convert_ids_to_tokens(tok(caption)["input_ids"])
    assert tokens[:4] == ["photo", "depicts", "malignant", "lesion"] and tokens[-1] == "</s>"
    assert "<unk>" not in tokens and "blue" in tokens and "11" in tokens and len(tokens) < 25
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path)(caption)["input_ids"] == tok(caption)["input_ids"]


def test_dev_style_guidance_embedding_is_fed_in_training_and_sampling():
    from dermabench_plugins.flux_tiny import spec_from

    pipe = build_tiny_flux(spec_from("micro", guidance_embeds=True), seed=0)
    data = micro_training_set(pipe, n=2)
    x_t = data.latents
    t = torch.tensor([0.5, 0.5])
    low = FluxDenoiser(pipe.transformer, SIZE, SIZE, pipe.vae_scale_factor, guidance=1.0)
    high = FluxDenoiser(pipe.transformer, SIZE, SIZE, pipe.vae_scale_factor, guidance=3.5)
    with torch.no_grad():
        a = low.predict(pipe.transformer, x_t, t, data.conditioning)
        b = high.predict(pipe.transformer, x_t, t, data.conditioning)
    assert a.shape == x_t.shape and not torch.allclose(a, b)
    pipe.transformer.requires_grad_(True)
    result = train(high, data, RectifiedFlow(), TrainConfig(steps=3, batch_size=2, checkpoint_every=0))
    assert result.finished and all(np.isfinite(result.losses))


def test_dct_latents_reconstruct_and_flip_as_images():
    from dermabench_plugins.flux_tiny import DCTVAE

    # seeded: torch seeds its global generator at random per process, and the low-frequency check below
    # fails for about one random draw in five
    g = torch.Generator().manual_seed(0)
    vae = DCTVAE(downscale=4, luma_coefficients=64, chroma_coefficients=64)  # every frequency: lossless
    x = torch.rand(8, 3, 16, 16, generator=g) * 2 - 1
    assert torch.allclose(vae.decode(vae.encode(x).latent_dist.mode()).sample, x, atol=1e-5)
    vae = DCTVAE()  # the tiny model's 32 + 8 + 8 of 64 frequencies
    coarse = torch.rand(8, 3, 4, 4, generator=g) * 1.6 - 0.8
    smooth = torch.nn.functional.interpolate(coarse, size=16, mode="bilinear")
    vae.fit_normalization(smooth)
    z = vae.encode(smooth).latent_dist.mode()
    assert z.shape == (8, 12, 4, 4) and abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1) < 0.1
    assert float(z[:, 0].std()) > 2 * float(z[:, -1].std())  # one common scale: low frequencies stay strong
    recon = vae.decode(z).sample
    assert float((recon - smooth).abs().mean()) < 0.05  # smooth images survive the low-pass
    out = vae.decode(vae.augment(z, torch.Generator().manual_seed(0))).sample
    for original, flipped in zip(recon, out):
        variants = [torch.rot90(v, k, dims=(1, 2)) for v in (original, original.flip(2)) for k in range(4)]
        assert min(float((flipped - v).abs().max()) for v in variants) < 1e-4
    assert not torch.allclose(out, recon)


def test_lora_fit_on_a_model_folder_takes_the_full_size_path(tmp_path, pool):
    """model=PATH is the paper path (FLUX.1-dev folder); a saved micro pipeline stands in for it here."""
    build_tiny_flux(PRESETS["micro"], seed=5).save_pretrained(tmp_path / "flux")
    opts = {"model": str(tmp_path / "flux"), "steps": "2", "height": str(SIZE), "width": str(SIZE),
            "train_steps": "3", "train_batch_size": "2", "checkpoint_every": "0", "max_sequence_length": "16"}
    gen = DermaFluxGenerator(**opts)
    resolved = gen.resolved(ctx(tmp_path))
    assert gen.train_mode == "lora" and resolved["rank"] == 64 and resolved["alpha"] == 64
    assert resolved["lr"] == 1e-4 and resolved["gradient_checkpointing"] is True
    gen.fit(pool, ctx(tmp_path / "work"))
    final = next((tmp_path / "work" / "fits").glob("*/final"))
    assert (final / LORA_FILE).is_file() and gen.last_fit["steps"] == 3
    out = gen.generate(prompts(2), ctx(tmp_path / "work"))
    assert [im.size for im in out] == [(SIZE, SIZE)] * 2


def test_fp32_and_bf16_fits_share_a_process_and_leave_the_transformer_returning_its_own_dtype():
    # tiny models fit in fp32, full-size ones under bf16 autocast: accelerate's mixed precision is one setting per
    # process (the second fit raised), and its wrapped forward returned fp32 latents to a bf16 VAE after a fit
    # (seen on an H200). bf16 autocast runs on the CPU too.
    pipe = build_tiny_flux(PRESETS["micro"], seed=0)
    data = micro_training_set(pipe, n=2)
    denoiser = FluxDenoiser(pipe.transformer, SIZE, SIZE, pipe.vae_scale_factor, guidance=1.0)
    pipe.transformer.requires_grad_(True)
    forward = pipe.transformer.forward
    for precision in ("no", "bf16"):
        result = train(denoiser, data, RectifiedFlow(),
                       TrainConfig(steps=2, batch_size=2, checkpoint_every=0, mixed_precision=precision))
        assert result.finished and all(np.isfinite(result.losses))
    assert pipe.transformer.forward == forward and "_original_forward" not in vars(pipe.transformer)
    pipe.transformer.to(torch.bfloat16)
    with torch.no_grad():
        out = denoiser.predict(pipe.transformer, data.latents.to(torch.bfloat16), torch.tensor([0.5, 0.5]),
                               data.conditioning)
    assert out.dtype == torch.bfloat16


def test_accelerates_mixed_precision_forward_is_undone_keeping_diffusers_decorators():
    # what `accelerate launch --mixed_precision bf16` does in prepare: the forward wrapped, the original kept
    from dermabench_plugins.diffusion_training import _restore_forward

    transformer = build_tiny_flux(PRESETS["micro"], seed=0).transformer
    original = transformer.forward
    transformer._original_forward = original
    transformer.forward = lambda *a, **k: original(*a, **k)
    _restore_forward(transformer)
    assert transformer.forward == original and "_original_forward" not in vars(transformer)
    assert hasattr(type(transformer).forward, "__wrapped__")  # diffusers' apply_lora_scale stays on


def test_a_ddp_wrapped_fit_restores_the_inner_transformers_forward(tmp_path, monkeypatch):
    # `accelerate launch --mixed_precision bf16` with several processes: prepare patches the forward of the model
    # it is given (autocast, outputs cast to fp32), then wraps that model in DistributedDataParallel. The patch
    # must come off the inner transformer, or the bf16 pipeline gets fp32 latents after the fit. Reproduced with
    # torchrun --nproc_per_node 2 (gloo); here one gloo process and a real DDP wrapper stand in for it.
    from types import MethodType

    import accelerate
    import torch.distributed as dist
    from accelerate.utils import convert_outputs_to_fp32

    pipe = build_tiny_flux(PRESETS["micro"], seed=0)
    data = micro_training_set(pipe, n=2)
    transformer = pipe.transformer.requires_grad_(True)
    denoiser = FluxDenoiser(transformer, SIZE, SIZE, pipe.vae_scale_factor, guidance=1.0)
    wrapped = []

    def prepare(self, model, optimizer):  # what Accelerator.prepare does for bf16 over several processes
        model._original_forward = model.forward
        model.forward = MethodType(convert_outputs_to_fp32(model.forward.__func__), model)
        if not dist.is_initialized():
            dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
        ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        wrapped.append(ddp)
        return ddp, optimizer

    monkeypatch.setattr(accelerate.Accelerator, "prepare", prepare)
    try:
        result = train(denoiser, data, RectifiedFlow(), TrainConfig(steps=2, batch_size=2, checkpoint_every=0))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert result.finished and wrapped and wrapped[0].module is transformer
    assert "_original_forward" not in vars(transformer) and "forward" not in vars(transformer)
    transformer.to(torch.bfloat16)
    with torch.no_grad():
        out = denoiser.predict(transformer, data.latents.to(torch.bfloat16), torch.tensor([0.5, 0.5]),
                               data.conditioning)
    assert out.dtype == torch.bfloat16


def test_a_lora_fit_on_a_trained_tiny_folder_keeps_the_latent_space_it_was_trained_in(tmp_path, pool):
    # model=<a trained tiny folder> trains a LoRA (train=auto): the DCT VAE's train-pool standardisation is part of
    # that model; re-fitting it on the new pool would show the base transformer latents it never saw
    from PIL import ImageOps
    from safetensors.torch import load_file

    import dermabench

    first = DermaFluxGenerator(train_steps="2", train_batch_size="4", **MICRO)
    first.fit(pool, ctx(tmp_path / "a"))
    assert first.pipe.vae.is_normalized()  # a fresh tiny VAE is standardised on its pool
    final = next((tmp_path / "a" / "fits").glob("*/final"))
    mean, std = first.pipe.vae.mean.clone(), first.pipe.vae.std.clone()
    other_pool = [dermabench.Sample(ImageOps.invert(s.image), s.label, s.caption) for s in pool]
    opts = {"model": str(final), "steps": "2", "height": str(SIZE), "width": str(SIZE), "train_steps": "2",
            "train_batch_size": "2", "rank": "4", "checkpoint_every": "0", "max_sequence_length": "16"}
    gen = DermaFluxGenerator(**opts)
    assert gen.train_mode == "lora"
    gen.fit(other_pool, ctx(tmp_path / "b"))
    assert torch.equal(gen.pipe.vae.mean, mean) and torch.equal(gen.pipe.vae.std, std)
    beside = load_file(str(next((tmp_path / "b" / "fits").glob("*/final")) / "vae.safetensors"))
    assert torch.equal(beside["mean"], mean) and torch.equal(beside["std"], std)


def test_a_saved_pipeline_loads_from_safetensors_only(tmp_path):
    build_tiny_flux(PRESETS["micro"], seed=0).save_pretrained(tmp_path / "pickled", safe_serialization=False)
    gen = DermaFluxGenerator(**MICRO)
    with pytest.raises(DermabenchError, match="cannot load FLUX"):
        gen._load_saved_pipeline(tmp_path / "pickled", ctx(tmp_path))


@pytest.mark.parametrize("vae_class", ["DCTVAE", "BlockDCTVAE"])
def test_tiny_dct_latents_flip_and_turn_exactly_as_their_images(vae_class):
    # the reason the tiny models may transform latents (DCTVAE.augment) where a learned VAE may not: augmenting
    # the latent of an image gives the latent of the augmented image, for any image, not only smooth ones
    from dermabench_plugins import flux_tiny, sd_tiny
    from dermabench_plugins.diffusion_training import dihedral_augment

    vae = (flux_tiny.DCTVAE if vae_class == "DCTVAE" else sd_tiny.BlockDCTVAE)()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 32, 32, generator=g) * 2 - 1
    vae.fit_normalization(x)
    z = vae.encode(x).latent_dist.mode()
    for seed in range(3):
        augmented = vae.augment(z, torch.Generator().manual_seed(seed))
        expected = vae.encode(dihedral_augment(x, torch.Generator().manual_seed(seed))).latent_dist.mode()
        assert torch.allclose(augmented, expected, atol=1e-4), float((augmented - expected).abs().max())
        assert not torch.allclose(augmented, z)


class RecordingFlow(RectifiedFlow):
    """Rectified flow that records the clean latents x0 of every training batch."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def noisy_input(self, x0, noise, t):
        self.seen.append(x0.detach().clone())
        return super().noisy_input(x0, noise, t)


def test_training_flips_use_encoded_variants_and_never_transform_a_learned_vaes_latents():
    pipe = build_tiny_flux(PRESETS["micro"], seed=0)
    data = micro_training_set(pipe, n=4)
    mirrored = torch.randn(4, 1, *data.latents.shape[1:], generator=torch.Generator().manual_seed(1))
    pipe.transformer.requires_grad_(True)
    denoiser = FluxDenoiser(pipe.transformer, SIZE, SIZE, pipe.vae_scale_factor, guidance=1.0)
    cfg = TrainConfig(steps=6, batch_size=4, checkpoint_every=0, lr=1e-5)

    def kinds(seen, data):
        found = set()
        for x0 in seen:
            for row in x0:
                if any(torch.equal(row, latent) for latent in data.latents):
                    found.add("image")
                elif data.variants is not None and any(torch.equal(row, v) for v in data.variants[:, 0]):
                    found.add("variant")
                else:
                    found.add("transformed")
        return found

    with_variants = TrainingSet(data.latents, data.conditioning, variants=mirrored)
    flow = RecordingFlow()
    train(denoiser, with_variants, flow, cfg)
    assert kinds(flow.seen, with_variants) == {"image", "variant"}  # both, and nothing else
    plain = TrainingSet(data.latents, data.conditioning)  # no exact augment, no variants: flip changes nothing
    flow = RecordingFlow()
    train(denoiser, plain, flow, cfg)
    assert kinds(flow.seen, plain) == {"image"}
    with pytest.raises(ValueError, match="variants"):
        TrainingSet(data.latents, data.conditioning, variants=mirrored[:2])


def test_a_lora_fit_on_a_folder_with_a_learned_vae_trains_on_its_encoded_mirror_images(tmp_path, pool, monkeypatch):
    """The paper path with a conv VAE like FLUX.1-dev's (shrunk, random): flips are encoded mirror images."""
    from diffusers import AutoencoderKL, FluxPipeline
    from dermabench_plugins import diffusion_training

    pipe = build_tiny_flux(PRESETS["micro"], seed=5)
    torch.manual_seed(0)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4,
                        latent_channels=pipe.transformer.config.in_channels // 4, scaling_factor=0.5, shift_factor=0.1)
    parts = {k: getattr(pipe, k) for k in ("scheduler", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2",
                                           "transformer")}
    FluxPipeline(vae=vae, **parts).save_pretrained(tmp_path / "flux")
    seen, real_train = [], diffusion_training.train

    def train_spy(denoiser, data, *args, **kwargs):
        seen.append(data)
        return real_train(denoiser, data, *args, **kwargs)

    monkeypatch.setattr(diffusion_training, "train", train_spy)
    opts = {"model": str(tmp_path / "flux"), "steps": "2", "height": str(SIZE), "width": str(SIZE), "rank": "4",
            "train_steps": "3", "train_batch_size": "2", "checkpoint_every": "0", "max_sequence_length": "16"}
    gen = DermaFluxGenerator(**opts)
    gen.fit(pool, ctx(tmp_path / "work"))
    assert gen.last_fit["steps"] == 3 and len(seen) == 1
    assert seen[0].augment is None and seen[0].variants.shape[:2] == (len(pool), 1)
    assert [im.size for im in gen.generate(prompts(2), ctx(tmp_path / "work"))] == [(SIZE, SIZE)] * 2
