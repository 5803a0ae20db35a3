"""What every trained generator does alike (`trained_generator.TrainedGenerator`), for dermaflux, sd15 and sdxl
on their micro models: images per prompt, fit before generate, LoRA files, resuming a killed fit. What each
does its own way is in test_dermaflux.py and test_stable_diffusion.py."""

from __future__ import annotations

import numpy as np
import pytest
from dermabench_plugins.dermaflux import DermaFluxGenerator
from dermabench_plugins.diffusion_training import latest_checkpoint
from dermabench_plugins.stable_diffusion import StableDiffusionGenerator, StableDiffusionXLGenerator
from PIL import Image
from trained_generators import MICRO, SIZE, arrays, ctx, lesion_pool, prompts

import dermabench
from dermabench.errors import DermabenchError, PluginError

EVERY = pytest.mark.parametrize(
    "cls", [DermaFluxGenerator, StableDiffusionGenerator, StableDiffusionXLGenerator], ids=["dermaflux", "sd15", "sdxl"]
)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pool():
    return lesion_pool()


@EVERY
def test_one_rgb_image_per_prompt_of_the_run_size(tmp_path, cls):
    gen = cls(train="none", **MICRO)
    out = gen.generate(prompts(5), ctx(tmp_path))
    assert len(out) == 5
    assert all(isinstance(im, Image.Image) and im.mode == "RGB" and im.size == (SIZE, SIZE) for im in out)
    assert gen.generate([], ctx(tmp_path)) == []
    wide = cls(train="none", height="16", width="24", **MICRO).generate(prompts(1), ctx(tmp_path))
    assert wide[0].size == (24, 16)


@EVERY
def test_generate_before_fit_is_an_error_when_training_is_expected(tmp_path, cls):
    with pytest.raises(PluginError, match="before fit"):
        cls(**MICRO).generate(prompts(1), ctx(tmp_path))


@EVERY
def test_a_missing_or_pickled_lora_file_fails_fast(tmp_path, cls):
    with pytest.raises(DermabenchError, match="LoRA file not found"):
        cls(lora=str(tmp_path / "missing.safetensors"))
    (tmp_path / "lora.bin").write_bytes(b"x")
    with pytest.raises(DermabenchError, match="only as .safetensors"):
        cls(lora=str(tmp_path / "lora.bin"))


@pytest.mark.parametrize("cls, extra", [(DermaFluxGenerator, {}), (StableDiffusionGenerator, {"snr_gamma": "5"})],
                         ids=["dermaflux", "sd15"])
def test_resume_from_a_checkpoint_continues_at_the_saved_step(tmp_path, pool, cls, extra):
    opts = {"train_steps": "6", "train_batch_size": "4", "checkpoint_every": "2", "model": "micro", "steps": "3",
            **extra}
    killed = cls(**opts)
    killed.stop_after = 3  # "killed" after step 3: checkpoints at 2 and 3 (the stop), no final weights
    killed.fit(pool, ctx(tmp_path / "a"))
    assert killed.last_fit == {"step": 3, "finished": False, "resumed_from": None}
    ckpt_dir = next((tmp_path / "a" / "fits").glob("*/checkpoints"))
    step, path = latest_checkpoint(ckpt_dir)
    assert step == 3 and (path / "optimizer.safetensors").is_file() and (path / "trainable.safetensors").is_file()
    with pytest.raises(PluginError, match="before fit"):
        killed.generate(prompts(1), ctx(tmp_path / "a"))

    resumed = cls(**opts)
    resumed.fit(pool, ctx(tmp_path / "a"))
    assert resumed.last_fit["resumed_from"] == 3 and resumed.last_fit["steps"] == 6
    assert not ckpt_dir.exists()  # cleaned up once the final weights are saved

    straight = cls(**opts)
    straight.fit(pool, ctx(tmp_path / "b"))
    assert straight.last_fit["resumed_from"] is None
    ps = prompts(3)
    a = arrays(resumed.generate(ps, ctx(tmp_path / "a")))
    b = arrays(straight.generate(ps, ctx(tmp_path / "b")))
    assert np.abs(a - b).max() <= 1  # the same run, interrupted or not


def test_lora_initialisation_depends_on_the_seed_not_on_the_global_rng():
    """peft initialises LoRA weights from torch's global RNG; two fits of one key must start alike."""
    import torch
    from dermabench_plugins.trained_generator import add_lora

    def lora_weights(global_seed: int, seed: int) -> dict:
        torch.manual_seed(global_seed)  # another state of the host's stream, as in another process
        module = torch.nn.Sequential(torch.nn.Linear(8, 8))
        module.load_state_dict({"0.weight": torch.ones(8, 8), "0.bias": torch.zeros(8)})
        from diffusers.loaders import PeftAdapterMixin
        from diffusers.models.modeling_utils import ModelMixin

        class Tiny(ModelMixin, PeftAdapterMixin):
            def __init__(self):
                super().__init__()
                self.proj = module[0]

        tiny = Tiny()
        before = torch.get_rng_state()
        add_lora(tiny, {"rank": 2, "alpha": 2.0}, ["proj"], seed=seed)
        assert torch.equal(before, torch.get_rng_state())  # the host's stream is left as it was
        return {k: v.clone() for k, v in tiny.state_dict().items() if "lora" in k}

    a, b, c = lora_weights(1, seed=7), lora_weights(2, seed=7), lora_weights(1, seed=8)
    assert a and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("cls", [DermaFluxGenerator, StableDiffusionGenerator], ids=["dermaflux", "sd15"])
def test_a_pipeline_reloaded_from_a_finished_fit_keeps_the_vae_memory_switches(tmp_path, pool, cls, monkeypatch):
    from dermabench_plugins.flux_tiny import DCTVAE

    opts = {"train_steps": "2", "train_batch_size": "4", "model": "micro", "steps": "2"}
    cls(**opts).fit(pool, ctx(tmp_path))  # trains and saves the pipeline
    calls = []
    monkeypatch.setattr(DCTVAE, "enable_tiling", lambda self, *a, **k: calls.append((self, "tiling")))
    monkeypatch.setattr(DCTVAE, "enable_slicing", lambda self: calls.append((self, "slicing")))
    cached = cls(**opts, vae_tiling="true", vae_slicing="true")
    cached.fit(pool, ctx(tmp_path))  # the same fit key: loads the saved pipeline
    assert cached.last_fit["reused"] is True
    assert sorted(switch for vae, switch in calls if vae is cached.pipe.vae) == ["slicing", "tiling"]


def saved_micro_folder(cls, folder):
    """A micro pipeline saved as an ordinary diffusers folder: a stand-in for a full-size model (model=PATH)."""
    if cls is DermaFluxGenerator:
        from dermabench_plugins.flux_tiny import PRESETS, build_tiny_flux

        build_tiny_flux(PRESETS["micro"], seed=1).save_pretrained(folder)
    else:
        from dermabench_plugins.sd_tiny import PRESETS, build_tiny_sd

        build_tiny_sd(PRESETS["micro"], seed=1, xl=cls.xl).save_pretrained(folder)
    return str(folder)


@EVERY
def test_the_image_cache_key_follows_the_runs_profile_device_and_dtype(tmp_path, cls):
    # a tiny model's fit trains 30 / 1000 / 4000 steps under smoke / quick / paper: their images differ
    import json

    gen = cls(**MICRO)
    keys = {profile: gen.cache_key(ctx(tmp_path, profile)) for profile in ("smoke", "quick", "paper")}
    assert [keys[p]["options"]["train_steps"] for p in ("smoke", "quick", "paper")] == [30, 1000, 4000]
    assert len({json.dumps(key, sort_keys=True, default=str) for key in keys.values()}) == 3
    assert (keys["smoke"]["device"], keys["smoke"]["dtype"]) == ("cpu", "float32")
    # dtype=auto: a full-size model samples in bf16 on CUDA and in fp32 on a CPU; the key says which
    folder = cls(model=saved_micro_folder(cls, tmp_path / "model"), train="none")
    on_gpu = folder.cache_key(ctx(tmp_path, device="cuda:1"))
    on_cpu = folder.cache_key(ctx(tmp_path, device="cpu"))
    assert (on_gpu["device"], on_gpu["dtype"]) == ("cuda", "bfloat16") and on_cpu["dtype"] == "float32"
    assert on_gpu != on_cpu
    assert folder.cache_key() == folder.cache_key()  # a host that passes no context still gets a key


@EVERY
def test_training_embeddings_are_one_cpu_row_per_caption_copied_off_the_device_chunk_by_chunk(tmp_path, cls,
                                                                                              monkeypatch):
    # FLUX.1-dev's T5 output is 4 MiB per caption: every caption kept (and stacked) on the GPU ran an H100 out of
    # memory for a 6,000-caption train pool. Each encoded chunk must be let go before the next one is encoded.
    import weakref

    import torch
    from trained_generators import lesion

    import dermabench

    gen = cls(**MICRO)
    context = ctx(tmp_path)
    pipe = gen.load(context)
    opts = gen.resolved(context)
    samples = [dermabench.Sample(lesion(i % 2, i), i % 2, caption=f"a {'benign' if i % 2 == 0 else 'malignant'} "
                                 f"lesion, diameter {i % 100} mm") for i in range(200)]  # 100 captions, twice each
    captions = [s.caption for s in samples]
    old = gen._encode_prompts(captions, opts)  # what the training set was stacked from before
    expected = torch.stack([old[c][0] for c in captions])
    real, held = cls._encode_text, []

    def encode_text(self, *args, **kwargs):
        assert all(ref() is None for ref in held), "an earlier chunk's embeddings are still held"
        out = real(self, *args, **kwargs)
        held.extend(weakref.ref(t) for t in out if isinstance(t, torch.Tensor))
        return out

    monkeypatch.setattr(cls, "_encode_text", encode_text)
    data = gen._training_set(pipe, samples, opts, SIZE, SIZE, context)
    rows = data.conditioning["prompt_embeds"]
    assert rows.device.type == "cpu" and rows.dtype == torch.float32 and len(rows) == 100  # one per caption
    assert data.conditioning_index.tolist() == [i % 100 for i in range(200)]
    assert torch.equal(rows[data.conditioning_index], expected)
    if "pooled" in data.conditioning:
        pooled = torch.stack([old[c][1] for c in captions])
        assert torch.equal(data.conditioning["pooled"][data.conditioning_index], pooled)
    assert all(v.device.type == "cpu" for v in data.null_conditioning.values())


def tiny_conv_vae(latent_channels: int):
    """A learned (random) conv VAE like FLUX's and SD's, shrunk: its latents do not flip with the image."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4,
                         latent_channels=latent_channels, scaling_factor=0.5, shift_factor=0.1).eval()


@EVERY
def test_a_learned_vae_trains_on_encoded_mirror_images_not_on_flipped_latents(tmp_path, pool, cls):
    import torch

    gen = cls(**MICRO)
    context = ctx(tmp_path)
    pipe = gen.load(context)
    pipe.vae = tiny_conv_vae(4)
    assert not gen._exact_latent_flips()
    opts = gen.resolved(context)
    data = gen._training_set(pipe, pool, opts, SIZE, SIZE, context)
    x = torch.stack([torch.from_numpy(np.array(s.image)).permute(2, 0, 1) for s in pool]).float() / 127.5 - 1
    with torch.no_grad():
        def encode(pixels):
            return (pipe.vae.encode(pixels).latent_dist.mode() - 0.1) * 0.5

        assert torch.allclose(data.latents, encode(x), atol=1e-4)
        assert data.augment is None and data.variants.shape == (len(pool), 1, *data.latents.shape[1:])
        assert torch.allclose(data.variants[:, 0], encode(x.flip(3)), atol=1e-4)  # the mirror image, encoded
        assert not torch.allclose(data.variants[:, 0], data.latents.flip(3), atol=1e-2)  # ≠ the flipped latent
    no_flip = gen._training_set(pipe, pool, {**opts, "flip": False}, SIZE, SIZE, context)
    assert no_flip.variants is None and torch.equal(no_flip.latents, data.latents)


def test_a_second_run_fitting_the_same_model_waits_then_reuses_the_weights(tmp_path, pool):
    """Two runs sharing an --out take turns on one fit folder: the second waits for the lock, then reuses."""
    import fcntl
    import threading
    import time

    opts = {"train_steps": "2", "train_batch_size": "4", "model": "micro", "steps": "2"}
    DermaFluxGenerator(**opts).fit(pool, ctx(tmp_path))  # the fit folder exists, trained once
    (lock,) = (tmp_path / "fits").glob("*.lock")
    lines = []

    class Lines(dermabench.Progress):
        def log(self, message):
            lines.append(message)

    second = DermaFluxGenerator(**opts)
    with open(lock, "a") as held:  # another run is fitting right now
        fcntl.flock(held, fcntl.LOCK_EX)
        worker = threading.Thread(target=second.fit, args=(pool, ctx(tmp_path, progress=Lines())))
        worker.start()
        deadline = time.monotonic() + 120  # loading the model and keying the fit come first: slow on a busy CI
        while not lines and worker.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker.is_alive() and lines and lines[0].startswith("waiting for another run that is fitting")
        fcntl.flock(held, fcntl.LOCK_UN)
    worker.join(timeout=120)
    assert not worker.is_alive() and second.last_fit["reused"] is True
