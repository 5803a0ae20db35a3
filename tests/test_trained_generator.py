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
