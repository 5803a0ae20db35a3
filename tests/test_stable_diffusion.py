"""The `sd15` / `sdxl` generators (Stable Diffusion + LoRA) on tiny SD models built offline, and the DDPM objective."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dermabench_plugins import stable_diffusion
from dermabench_plugins.dermaflux import DermaFluxGenerator
from dermabench_plugins.diffusion_training import DDPMObjective, TrainConfig, TrainingSet, train
from dermabench_plugins.model_files import LORA_FILE
from dermabench_plugins.sd_tiny import PRESETS, BlockDCTVAE, build_tiny_sd
from dermabench_plugins.stable_diffusion import StableDiffusionGenerator, StableDiffusionXLGenerator, UNetDenoiser
from dermabench_plugins.trained_generator import TINY_TRAIN_DEFAULTS
from trained_generators import MICRO, SIZE, arrays, ctx, eval_loss, lesion, lesion_pool, prompts

from dermabench.errors import DermabenchError

BOTH = pytest.mark.parametrize("cls", [StableDiffusionGenerator, StableDiffusionXLGenerator], ids=["sd15", "sdxl"])
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pool():
    return lesion_pool()


# --------------------------------------------------------------------------- plugin basics


def test_registered_and_options_validated():
    found = []
    stable_diffusion.register_generators(register=found.append)
    assert found == [StableDiffusionGenerator, StableDiffusionXLGenerator]
    assert [cls.name for cls in found] == ["sd15", "sdxl"]
    with pytest.raises(DermabenchError, match="unknown option 'stepz'.*Did you mean 'steps'"):
        StableDiffusionGenerator(stepz=3)
    with pytest.raises(DermabenchError, match="sampler"):
        StableDiffusionGenerator(sampler="euler")
    with pytest.raises(DermabenchError, match="offload"):
        StableDiffusionGenerator(offload="model")  # tiny models run without offload
    gen = StableDiffusionGenerator(steps="7", lora_scale="0.5", sampler="ddim", snr_gamma="5")
    assert gen.config["steps"] == 7 and gen.config["sampler"] == "ddim" and gen.config["snr_gamma"] == 5.0
    assert gen.train_mode == "full"  # tiny models train from scratch by default
    # the option names that mean the same thing are dermaflux's
    shared = {"model", "lora", "lora_scale", "steps", "guidance", "height", "width", "batch_size", "offload", "dtype",
              "train", "train_steps", "train_batch_size", "rank", "alpha", "lr", "checkpoint_every", "ema", "flip"}
    assert shared <= set(StableDiffusionGenerator.option_specs) & set(DermaFluxGenerator.option_specs)


def test_documented_sampling_defaults(tmp_path):
    tiny = StableDiffusionGenerator().resolved(ctx(tmp_path))
    assert (tiny["sampler"], tiny["steps"], tiny["guidance"]) == ("dpmsolver++", 12, 1.0)
    assert tiny["height"] == tiny["width"] == SIZE and tiny["prediction_type"] == "v_prediction"
    assert StableDiffusionGenerator(prediction_type="epsilon").resolved(ctx(tmp_path))["prediction_type"] == "epsilon"
    assert StableDiffusionXLGenerator.default_guidance == 5.0 and StableDiffusionGenerator.default_guidance == 7.5


@pytest.mark.parametrize("profile", sorted(TINY_TRAIN_DEFAULTS))
def test_tiny_models_train_under_dermaflux_budget(tmp_path, profile):
    """Equal budget: the same steps × batch (and optimiser schedule) as DermaFlux tiny in every profile."""
    keys = ("train_steps", "train_batch_size", "lr", "warmup", "lr_schedule", "weight_decay", "grad_accum", "train")
    flux = DermaFluxGenerator().resolved(ctx(tmp_path, profile))
    for cls in (StableDiffusionGenerator, StableDiffusionXLGenerator):
        sd = cls().resolved(ctx(tmp_path, profile))
        assert {k: sd[k] for k in keys} == {k: flux[k] for k in keys}
        assert sd["train_steps"] == TINY_TRAIN_DEFAULTS[profile]["train_steps"]


def test_tiny_parameter_count_matches_dermaflux_tiny_within_25_percent():
    from dermabench_plugins.flux_tiny import PRESETS as FLUX_PRESETS
    from dermabench_plugins.flux_tiny import build_tiny_flux, count_parameters

    flux = count_parameters(build_tiny_flux(FLUX_PRESETS["tiny"]).transformer)
    for xl in (False, True):
        unet = count_parameters(build_tiny_sd(PRESETS["tiny"], xl=xl).unet)
        assert 0.75 <= unet / flux <= 1.25, (xl, unet, flux)


@pytest.mark.parametrize("sampler", ["dpmsolver++", "ddim", "ddpm"])
def test_generation_is_deterministic_per_seed_and_batch_independent(tmp_path, sampler):
    ps = prompts(6)
    opts = {**MICRO, "sampler": sampler, "train": "none"}
    a = arrays(StableDiffusionGenerator(**{**opts, "batch_size": "6"}).generate(ps, ctx(tmp_path)))
    b = arrays(StableDiffusionGenerator(**{**opts, "batch_size": "1"}).generate(ps, ctx(tmp_path)))
    c = arrays(StableDiffusionGenerator(**{**opts, "batch_size": "4"}).generate(ps[::-1], ctx(tmp_path)))
    assert np.abs(a - b).max() <= 1 and np.abs(a - c[::-1]).max() <= 1  # float rounding at most one grey level
    assert np.mean(a != b) < 0.01
    other = arrays(StableDiffusionGenerator(**opts).generate(prompts(6, seed0=5), ctx(tmp_path)))
    assert np.abs(a - other).mean() > 3  # another seed, another image


def test_samplers_share_the_model_noise_schedule(tmp_path):
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    gen = StableDiffusionGenerator(train="none", prediction_type="epsilon", **MICRO)
    gen.load(ctx(tmp_path))
    expected = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpmsolver++": DPMSolverMultistepScheduler}
    for name, kind in expected.items():
        scheduler = gen._sampler({"sampler": name})
        assert type(scheduler) is kind
        assert scheduler.config.prediction_type == "epsilon" and scheduler.config.beta_end == 0.012
        assert scheduler.config.timestep_spacing == "trailing"
        scheduler.set_timesteps(4)
        assert int(scheduler.timesteps[0]) == 999  # few-step sampling starts from pure noise
    assert gen._sampler({"sampler": "dpmsolver++"}).config.algorithm_type == "dpmsolver++"


# --------------------------------------------------------------------------- loading full-size models


def test_missing_offline_model_fails_fast_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(DermabenchError, match="sd15.*stable-diffusion-v1-5/stable-diffusion-v1-5.*not in the "
                       "Hugging Face cache.*HF_HUB_OFFLINE"):
        StableDiffusionGenerator(model="stable-diffusion-v1-5/stable-diffusion-v1-5")
    with pytest.raises(DermabenchError, match="sdxl.*stable-diffusion-xl-base-1.0.*not in the Hugging Face cache"):
        StableDiffusionXLGenerator(model="stabilityai/stable-diffusion-xl-base-1.0")
    with pytest.raises(DermabenchError, match="model folder not found: .*no/such/sd"):
        StableDiffusionGenerator(model=str(tmp_path / "no" / "such" / "sd"))
    (tmp_path / "not-sd").mkdir()
    with pytest.raises(DermabenchError, match="no model_index.json"):
        StableDiffusionGenerator(model=str(tmp_path / "not-sd"))
    (tmp_path / "half-sd").mkdir()
    (tmp_path / "half-sd" / "model_index.json").write_text("{}")
    (tmp_path / "half-sd" / "unet").mkdir()
    with pytest.raises(DermabenchError, match="lacks vae, text_encoder, tokenizer, scheduler"):
        StableDiffusionGenerator(model=str(tmp_path / "half-sd"), train="none").generate(prompts(1), ctx(tmp_path))


@BOTH
def test_a_saved_tiny_pipeline_loads_as_a_diffusers_folder(tmp_path, cls):
    build_tiny_sd(PRESETS["micro"], seed=3, xl=cls.xl).save_pretrained(tmp_path / "sd")
    opts = {"steps": "3", "batch_size": "4"}
    gen = cls(model=str(tmp_path / "sd"), train="none", **opts)
    assert gen.model_identity()["model"] == str(tmp_path / "sd")
    resolved = gen.resolved(ctx(tmp_path))
    assert resolved["height"] == 8 * 4  # the model's native size: UNet sample_size × VAE downscale
    assert resolved["guidance"] == cls.default_guidance and resolved["steps"] == 3
    out = gen.generate(prompts(2), ctx(tmp_path))  # with classifier-free guidance (full-size default)
    assert [im.size for im in out] == [(32, 32)] * 2
    key = gen.cache_key()
    assert key["model"]["files"] and key["lora"] is None and key["generator"] == cls.name
    with pytest.raises(DermabenchError, match="prediction_type is for tiny models"):
        cls(model=str(tmp_path / "sd"), prediction_type="v_prediction")


# --------------------------------------------------------------------------- LoRA


def fit_lora(cls, tmp_path, pool, **extra):
    gen = cls(train="lora", rank="4", alpha="8", train_steps="4", train_batch_size="4", lr="1e-1", **MICRO, **extra)
    gen.fit(pool, ctx(tmp_path))
    return gen


@BOTH
def test_lora_fit_save_and_load_round_trip_reproduces_images(tmp_path, pool, cls):
    gen = fit_lora(cls, tmp_path / "work", pool)
    ps = prompts(4)
    trained = arrays(gen.generate(ps, ctx(tmp_path / "work")))
    saved = next((tmp_path / "work" / "fits").glob("*/final")) / LORA_FILE
    assert saved.is_file()
    from safetensors.torch import load_file

    keys = list(load_file(str(saved)))
    assert keys and all(k.startswith("unet.") and "lora_" in k and ".attentions." in k for k in keys)
    assert any(".attn2.to_k." in k for k in keys)  # cross-attention is adapted too
    # the base alone gives other images: the LoRA changed something
    base = arrays(cls(train="none", **MICRO).generate(ps, ctx(tmp_path / "base")))
    assert np.abs(base - trained).mean() > 1
    # a fresh generator loading the saved file (train=none) reproduces the images exactly
    assert (saved.parent / "vae.safetensors").is_file()  # tiny: the DCT's train-pool standardisation
    loaded = cls(train="none", lora=str(saved), **MICRO)
    loaded.fit(pool, ctx(tmp_path / "other"))
    assert np.array_equal(arrays(loaded.generate(ps, ctx(tmp_path / "other"))), trained)
    # the file is an ordinary diffusers LoRA: the pipeline class's own load_lora_weights reads it
    pipe = build_tiny_sd(PRESETS["micro"], seed=0, xl=cls.xl)
    pipe.load_lora_weights(str(saved.parent), weight_name=LORA_FILE, adapter_name="x")
    assert any("lora_A" in n for n, _ in pipe.unet.named_parameters())
    # and a second fit with the same pool and options reuses the saved weights
    again = fit_lora(cls, tmp_path / "work", pool)
    assert again.last_fit["reused"] is True
    assert np.array_equal(arrays(again.generate(ps, ctx(tmp_path / "work"))), trained)


def test_kohya_format_lora_loads(tmp_path):
    """kohya sd-scripts SD 1.x LoRAs (the common community format) load through load_lora_weights."""
    from safetensors.torch import save_file

    base_gen = StableDiffusionGenerator(train="none", **MICRO)
    ps = prompts(2)
    base = arrays(base_gen.generate(ps, ctx(tmp_path)))
    g = torch.Generator().manual_seed(0)
    sd = {}
    for block, attn in (("down_blocks_0_attentions_0", "attn1"), ("mid_block_attentions_0", "attn2")):
        dim = 8 if block.startswith("down") else 16
        for proj in ("to_q", "to_v"):
            name = f"lora_unet_{block}_transformer_blocks_0_{attn}_{proj}"
            n_in = dim if proj == "to_q" or attn == "attn1" else 32
            sd[f"{name}.lora_down.weight"] = torch.randn(2, n_in, generator=g)
            sd[f"{name}.lora_up.weight"] = torch.randn(dim, 2, generator=g)
            sd[f"{name}.alpha"] = torch.tensor(2.0)
    path = tmp_path / "kohya.safetensors"
    save_file(sd, str(path))
    gen = StableDiffusionGenerator(lora=str(path), **MICRO)
    gen.fit([], ctx(tmp_path))
    assert np.abs(arrays(gen.generate(ps, ctx(tmp_path))) - base).mean() > 1
    names = {n for n, _ in gen.pipe.unet.named_modules() if n.endswith("lora_A.sd")}
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.sd" in names
    # lora_scale=0 switches it off again
    off = StableDiffusionGenerator(lora=str(path), lora_scale="0", **MICRO)
    off.fit([], ctx(tmp_path))
    assert np.array_equal(arrays(off.generate(ps, ctx(tmp_path))), base)
    assert gen.cache_key()["lora"] != StableDiffusionGenerator(**MICRO).cache_key()["lora"]


# --------------------------------------------------------------------------- the DDPM objective and training


def micro_training_set(pipe, n=4):
    x = torch.stack([torch.from_numpy(np.array(lesion(i % 2, i))).permute(2, 0, 1) for i in range(n)])
    pipe.vae.fit_normalization(x.float() / 127.5 - 1)
    latents = pipe.vae.encode(x.float() / 127.5 - 1).latent_dist.mode()
    with torch.no_grad():
        pe, _ = pipe.encode_prompt([f"a {'benign' if i % 2 == 0 else 'malignant'} lesion" for i in range(n)], "cpu",
                                   1, do_classifier_free_guidance=False)
    return TrainingSet(latents, {"prompt_embeds": pe})


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddpm_fit_lowers_the_loss_on_a_fixed_batch(prediction_type):
    from dermabench_plugins.sd_tiny import spec_from

    pipe = build_tiny_sd(spec_from("micro", prediction_type=prediction_type), seed=0)
    data = micro_training_set(pipe)
    unet = pipe.unet.requires_grad_(True)
    denoiser = UNetDenoiser(unet)
    objective = DDPMObjective.from_scheduler(pipe.scheduler)
    assert objective.prediction_type == prediction_type  # the target follows the scheduler config
    before = eval_loss(denoiser, data, objective)
    result = train(denoiser, data, objective, TrainConfig(steps=60, batch_size=4, lr=1e-2, flip=False,
                                                          checkpoint_every=0))
    after = eval_loss(UNetDenoiser(unet.eval()), data, objective)
    assert result.finished and len(result.losses) == 60
    assert after < 0.75 * before, (before, after)  # seen: 0.66 (epsilon), 0.49 (v)
    assert np.mean(result.losses[-10:]) < np.mean(result.losses[:10])


def test_ddpm_objective_from_scheduler_and_min_snr_weights():
    from diffusers import DDPMScheduler, PNDMScheduler

    # SD 1.5's PNDM config → the same betas as DDPM, epsilon; SD 2.1's → v_prediction
    config = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}
    eps = DDPMObjective.from_scheduler(PNDMScheduler(**config))
    v = DDPMObjective.from_scheduler({**config, "prediction_type": "v_prediction"}, snr_gamma=5.0)
    assert eps.prediction_type == "epsilon" and v.prediction_type == "v_prediction"
    assert torch.allclose(eps.alphas_cumprod, DDPMScheduler(**config).alphas_cumprod.double())
    x0, noise = torch.ones(2, 3, 4, 4), torch.full((2, 3, 4, 4), -2.0)
    t = torch.tensor([0.0, 0.9999])
    assert torch.equal(eps.target(x0, noise, t), noise)
    ab = eps.alphas_cumprod[[0, 999]].float().reshape(-1, 1, 1, 1)
    assert torch.allclose(v.target(x0, noise, t), ab.sqrt() * noise - (1 - ab).sqrt() * x0)
    assert torch.equal(eps.loss_weight(t), torch.ones(2))  # no snr_gamma: unweighted
    snr = v.snr(t)
    assert snr[0] > 5 > snr[1]
    eps5 = DDPMObjective.from_scheduler(config, snr_gamma=5.0)
    assert torch.allclose(eps5.loss_weight(t), torch.stack([5 / snr[0], torch.tensor(1.0)]))
    assert torch.allclose(v.loss_weight(t), torch.stack([5 / (snr[0] + 1), snr[1] / (snr[1] + 1)]))
    assert eps5.describe()["snr_gamma"] == 5.0 != eps.describe()["snr_gamma"]  # resume checks it
    with pytest.raises(ValueError, match="prediction_type"):
        DDPMObjective.from_scheduler({**config, "prediction_type": "sample"})


def test_full_fit_is_cached_and_saved_as_an_sd_folder(tmp_path, pool):
    opts = dict(train_steps="3", train_batch_size="4", **MICRO)
    first = StableDiffusionGenerator(**opts)
    first.fit(pool, ctx(tmp_path))
    assert first.last_fit["reused"] is False and first.last_fit["steps"] == 3
    final = next((tmp_path / "fits").glob("*/final"))
    assert (final / "model_index.json").is_file() and (final / "unet").is_dir()
    again = StableDiffusionGenerator(**opts)
    again.fit(pool, ctx(tmp_path))
    assert again.last_fit["reused"] is True
    ps = prompts(2)
    assert np.array_equal(arrays(first.generate(ps, ctx(tmp_path))), arrays(again.generate(ps, ctx(tmp_path))))
    # sampling options do not refit; training options do
    sampled = StableDiffusionGenerator(**{**opts, "sampler": "ddim", "steps": "5"})
    sampled.fit(pool, ctx(tmp_path))
    other_lr = StableDiffusionGenerator(lr="5e-4", **opts)
    other_lr.fit(pool, ctx(tmp_path))
    assert sampled.last_fit["reused"] is True and other_lr.last_fit["reused"] is False
    # the saved folder is the model for a later run
    reloaded = StableDiffusionGenerator(model=str(final), train="none", steps="3", guidance="1", height=str(SIZE),
                                        width=str(SIZE))
    assert np.abs(arrays(reloaded.generate(ps, ctx(tmp_path))) - arrays(first.generate(ps, ctx(tmp_path)))).max() <= 1
    key = StableDiffusionGenerator(**opts).cache_key()
    assert key != StableDiffusionGenerator(**{**opts, "steps": "4"}).cache_key()
    assert key != StableDiffusionXLGenerator(**opts).cache_key()


def test_caption_dropout_trains_the_unconditional_branch_for_guidance(tmp_path, pool):
    opts = dict(train_steps="4", train_batch_size="4", caption_dropout="0.5", lr="1e-2", **MICRO)
    gen = StableDiffusionGenerator(**opts)
    gen.fit(pool, ctx(tmp_path))
    ps = prompts(2)
    plain = arrays(gen.generate(ps, ctx(tmp_path)))
    gen_guided = StableDiffusionGenerator(guidance="4", **opts)
    gen_guided.fit(pool, ctx(tmp_path))
    assert gen_guided.last_fit["reused"] is True  # guidance is a sampling option
    guided = arrays(gen_guided.generate(ps, ctx(tmp_path)))
    assert np.abs(plain - guided).mean() > 1


def test_block_dct_latents_are_dermaflux_tiny_latents_laid_out_per_block():
    from dermabench_plugins.flux_tiny import DCTVAE

    x = torch.nn.functional.interpolate(torch.rand(3, 3, 8, 8) * 1.6 - 0.8, size=64, mode="bilinear")
    flux, sd = DCTVAE(), BlockDCTVAE()
    flux.fit_normalization(x)
    sd.fit_normalization(x)
    zf, zs = flux.encode(x).latent_dist.mode(), sd.encode(x).latent_dist.mode()
    assert zf.shape == (3, 12, 16, 16) and zs.shape == (3, 48, 8, 8)
    # the same 48 numbers per 8×8 block, in another layout
    per_block = zf.reshape(3, 12, 8, 2, 8, 2).permute(0, 2, 4, 1, 3, 5).reshape(3, 8, 8, 48)
    assert torch.allclose(per_block, zs.permute(0, 2, 3, 1), atol=1e-6)
    assert torch.allclose(sd.decode(zs).sample, flux.decode(zf).sample, atol=1e-5)
    out = sd.decode(sd.augment(zs, torch.Generator().manual_seed(0))).sample
    recon = sd.decode(zs).sample
    for original, flipped in zip(recon, out):
        variants = [torch.rot90(v, k, dims=(1, 2)) for v in (original, original.flip(2)) for k in range(4)]
        assert min(float((flipped - v).abs().max()) for v in variants) < 1e-4
