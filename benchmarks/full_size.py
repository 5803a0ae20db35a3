"""Full-size generators on a GPU: seconds per image, peak GPU memory and LoRA fit steps, random weights.

No FLUX.1-dev, SD 1.5 or SDXL weights can be downloaded where dermabench is
developed, so each pipeline is built from its published architecture (the
configs below: 11.9 B-parameter FLUX.1-dev transformer with T5-XXL and CLIP-L;
SD 1.5's 860 M UNet; SDXL's 2.6 B UNet with its two text encoders) with random
weights, directly on the GPU in bf16. Speed and memory do not depend on the
weight values. Each pipeline is handed to its plugin as if loaded from a model
folder, and every figure is taken through the plugin's own `generate` and `fit`
(prompt-embedding cache, per-prompt CPU seeds, batching, numpy → PIL, the
LoRA training loop with gradient checkpointing and bf16 autocast). Not
exercised here: reading 30 GB of weight files with `from_pretrained` (the
save → load round trip is tested on tiny models), and the tokenizers, which are
the project's word-level ones (the text encoders' sizes are the real ones).

    python -m benchmarks --only gpu --out DIR      # on a CUDA machine

The published anchor: FLUX.1-dev ≈ 7 s per 1024² image at 28 steps on one H100 in bf16.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
import traceback
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from benchmarks.generation_overhead import _direct_call, prompts
from benchmarks.measure import Figure, ratio_figure, time_pair
from dermabench import plugins
from dermabench.api import Progress, RunContext

#: FLUX.1-dev (black-forest-labs/FLUX.1-dev, each component's config.json)
FLUX_DEV = {
    "transformer": dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                        guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
    "vae": dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                latent_channels=16, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
                use_quant_conv=False, use_post_quant_conv=False),
    "clip": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 projection_dim=768, max_position_embeddings=77, hidden_act="quick_gelu"),
    "t5": dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, feed_forward_proj="gated-gelu",
               relative_attention_num_buckets=32, relative_attention_max_distance=128),
}
#: the vocabularies of the real tokenizers: the embedding tables are sized by them
VOCAB = {"clip": 49408, "t5": 32128}

_SD_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
               up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
               latent_channels=4)
#: Stable Diffusion 1.5 (the UNet is diffusers' default UNet2DConditionModel with CLIP-L's width)
SD15 = {
    "unet": dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                 block_out_channels=(320, 640, 1280, 1280), layers_per_block=2),
    "vae": {**_SD_VAE, "sample_size": 512, "scaling_factor": 0.18215},
    "clip": FLUX_DEV["clip"],
}
#: SDXL 1.0 base
SDXL = {
    "unet": dict(sample_size=128, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 block_out_channels=(320, 640, 1280), layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
                 attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816),
    "vae": {**_SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025},
    "clip": FLUX_DEV["clip"],
    "clip_2": dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                   projection_dim=1280, max_position_embeddings=77, hidden_act="gelu"),
}


def shrunk(configs: dict[str, dict], factor: int = 16) -> dict[str, dict]:
    """The same architectures with every width ÷ `factor` and one block per stage: the CPU test's size."""
    small = json.loads(json.dumps(configs))  # deep copy (tuples become lists, which the classes accept)
    t = small.get("transformer")
    if t:
        t.update(num_layers=1, num_single_layers=1, num_attention_heads=2, joint_attention_dim=64,
                 pooled_projection_dim=small["clip"]["hidden_size"] // factor)
    for key in ("unet",):
        if key in small:
            u = small[key]
            u["block_out_channels"] = [c // factor for c in u["block_out_channels"]]
            u["layers_per_block"] = 1
            u["norm_num_groups"] = 4
            if "transformer_layers_per_block" in u:
                u["transformer_layers_per_block"] = 1
            if isinstance(u.get("attention_head_dim"), list):
                u["attention_head_dim"] = [2] * len(u["attention_head_dim"])
            if "projection_class_embeddings_input_dim" in u:
                u["addition_time_embed_dim"] = 8
                u["projection_class_embeddings_input_dim"] = 6 * 8 + small["clip_2"]["projection_dim"] // factor
    v = small["vae"]
    v.update(block_out_channels=[c // factor for c in v["block_out_channels"]], layers_per_block=1, norm_num_groups=4)
    for key in ("clip", "clip_2"):
        if key in small:
            small[key].update(hidden_size=small[key]["hidden_size"] // factor, num_hidden_layers=1,
                              intermediate_size=small[key]["intermediate_size"] // factor, num_attention_heads=2,
                              projection_dim=small[key]["projection_dim"] // factor)
    if "t5" in small:
        small["t5"].update(d_model=64, d_ff=128, d_kv=32, num_heads=2, num_layers=1)
    if "unet" in small:
        small["unet"]["cross_attention_dim"] = sum(small[k]["hidden_size"] for k in ("clip", "clip_2") if k in small)
    return small


def _clip(config: dict, tokenizer, with_projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=VOCAB["clip"], bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **config)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg)


@contextlib.contextmanager
def _built_on(device: str, dtype: torch.dtype):
    """Construct modules straight on `device` in `dtype` (12 B fp32 parameters would not fit in host RAM quickly)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_flux(configs: dict, device: str, dtype: torch.dtype):
    """A FluxPipeline with random weights of the given architecture, in eval mode, encoders frozen.

    The adaLN modulation layers start at 1/100 of their default scale (DiT-style initialisations zero them):
    otherwise 57 random blocks multiply the activations until the training loss overflows.
    """
    from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    from dermabench_plugins.flux_tiny import _flux_scheduler, word_tokenizer

    tok_clip, tok_t5 = word_tokenizer(77, bos=True), word_tokenizer(512)
    with _built_on(device, dtype):
        transformer = FluxTransformer2DModel(**configs["transformer"])
        vae = AutoencoderKL(**configs["vae"])
        clip = _clip(configs["clip"], tok_clip)
        t5 = T5EncoderModel(T5Config(vocab_size=VOCAB["t5"], dropout_rate=0.0, is_encoder_decoder=False,
                                     use_cache=False, pad_token_id=tok_t5.pad_token_id,
                                     eos_token_id=tok_t5.eos_token_id, **configs["t5"]))
    with torch.no_grad():
        for name, module in transformer.named_modules():
            if name.endswith(("norm1.linear", "norm1_context.linear", "norm.linear", "norm_out.linear")):
                module.weight.mul_(0.01)
    pipe = FluxPipeline(scheduler=_flux_scheduler(), vae=vae, text_encoder=clip, tokenizer=tok_clip,
                        text_encoder_2=t5, tokenizer_2=tok_t5, transformer=transformer)
    return _frozen(pipe, (transformer, vae, clip, t5))


def build_sd(configs: dict, device: str, dtype: torch.dtype, xl: bool):
    """A StableDiffusion(XL)Pipeline with random weights of the given architecture."""
    from diffusers import (AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline,
                           StableDiffusionXLPipeline, UNet2DConditionModel)

    from dermabench_plugins.flux_tiny import word_tokenizer
    from dermabench_plugins.sd_tiny import sd_scheduler_config

    scheduler = DPMSolverMultistepScheduler.from_config(sd_scheduler_config("epsilon"), algorithm_type="dpmsolver++")
    tok = word_tokenizer(77, bos=True)
    with _built_on(device, dtype):
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        clip = _clip(configs["clip"], tok)
        clip_2 = _clip(configs["clip_2"], tok, with_projection=True) if xl else None
    if xl:
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=clip, text_encoder_2=clip_2, tokenizer=tok,
                                         tokenizer_2=tok, unet=unet, scheduler=scheduler,
                                         force_zeros_for_empty_prompt=True, add_watermarker=False)
        return _frozen(pipe, (unet, vae, clip, clip_2))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=clip, tokenizer=tok, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return _frozen(pipe, (unet, vae, clip))


def _frozen(pipe, modules):
    for module in modules:
        module.eval()
        module.requires_grad_(False)
    return pipe


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def hand_over(make, pipe, folder: Path, **options):
    """A generator (class `make`, `options`) holding a pipeline built in memory as if loaded from `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_config(folder)  # model_index.json: what the plugin's model identity reads
    generator = make(model=str(folder), **options)
    generator._setup(pipe)
    return generator


class StepClock(Progress):
    """Progress that times each step of the training loop (its `track` whose description starts "training")."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def track(self, iterable: Iterable, description: str, total: int | None = None) -> Iterator:
        for item in iterable:
            if description.startswith("training"):
                self.stamps.append(time.perf_counter())
            yield item
        if description.startswith("training"):
            self.stamps.append(time.perf_counter())

    def seconds_per_step(self, skip: int = 2) -> float:
        gaps = [b - a for a, b in zip(self.stamps, self.stamps[1:])]
        gaps = gaps[skip:] if len(gaps) > skip else gaps
        return sorted(gaps)[len(gaps) // 2] if gaps else float("nan")


def _gib(value: int) -> float:
    return round(value / 2**30, 2)


def _allocated(device: str) -> int:
    return torch.cuda.memory_allocated() if device.startswith("cuda") else 0


def _peak_reset(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak(device: str, baseline: int = 0) -> float | None:
    """Peak GPU memory since the last reset, less `baseline` (what other models held while this one ran)."""
    return _gib(torch.cuda.max_memory_allocated() - baseline) if device.startswith("cuda") else None


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def generation(name: str, pipe, work: Path, device: str, sizes: tuple[int, ...], steps: int, n: int,
               repeats: int, label: str, out: list[Figure], baseline: int = 0) -> None:
    """s/image through the plugin at each size (and the direct pipeline call at the first), peak memory.

    Figures go into `out` as they are measured, so that a failure later keeps them. `baseline`: bytes other
    models held on the GPU meanwhile, left out of the peak."""
    make = plugins.get("generator", name).cls
    context = RunContext(device=device, image_size=sizes[0], work_dir=work / name, profile="paper")
    for i, size in enumerate(sizes):
        generator = hand_over(make, pipe, work / f"{name}-model", train="none", steps=steps, height=size, width=size,
                              batch_size=n if i == 0 else 1)
        generator.fit([], context)
        opts = generator.resolved(context)
        todo = prompts(n if i == 0 else 2)
        generator.generate(todo[:1], context)  # warm-up: kernels for this size, the prompt-embedding cache
        _peak_reset(device)
        if i == 0:
            ours, direct = time_pair(lambda: generator.generate(todo, context),
                                     lambda: _direct_call(name, pipe, {**opts, "steps": steps}, todo, size), repeats)
            out.append(ratio_figure(
                "gpu", f"overhead, {label} generation ({n} images {size}², {steps} steps, batch {n})", ours, direct,
                s_per_image_dermabench=ours.median / n, s_per_image_direct=direct.median / n))
            per_image = ours.median / n
        else:
            per_image = min(_timed(lambda: generator.generate(todo[:1], context)) for _ in range(len(todo)))
        out.append(Figure("gpu", f"{label}, s per image at {size}² ({steps} steps, guidance {opts['guidance']}, "
                                 f"batch {n if i == 0 else 1}, via dermabench)", per_image, "s",
                          detail={"steps": steps, "size": size}))
        out.append(Figure("gpu", f"{label}, peak GPU memory generating at {size}² (its weights included)",
                          _peak(device, baseline) or 0.0, "GiB"))


def lora_fit(name: str, pipe, work: Path, device: str, steps: int, fit_steps: int, size: int, label: str,
             out: list[Figure]) -> None:
    """A LoRA fit through the plugin (rank 64, batch 1): s per step, peak memory; then one image with it."""
    from dermabench_plugins.phantom import PhantomDataset

    make = plugins.get("generator", name).cls
    clock = StepClock()
    context = RunContext(device=device, image_size=size, work_dir=work / name, profile="paper", progress=clock)
    train = list(PhantomDataset(n=8, size=size).samples())
    generator = hand_over(make, pipe, work / f"{name}-model", train="lora", train_steps=fit_steps, train_batch_size=1,
                          height=size, width=size, steps=steps, checkpoint_every=0)
    _peak_reset(device)
    seconds = _timed(lambda: generator.fit(train, context))
    out.append(Figure(
        "gpu", f"{label}, LoRA fit (rank 64, batch 1, {size}², gradient checkpointing): s per step",
        clock.seconds_per_step(), "s",
        detail={"fit_seconds_with_latent_and_text_caching": round(seconds, 2), "steps": fit_steps,
                "final_loss": generator.last_fit.get("final_loss")}))
    out.append(Figure("gpu", f"{label}, peak GPU memory of the LoRA fit", _peak(device) or 0.0, "GiB"))
    image = generator.generate(prompts(1), context)[0]  # the saved LoRA reloads and samples
    out.append(Figure("gpu", f"{label}, image after the LoRA fit (side, px)", float(image.size[0]), "px"))
    trained = getattr(pipe, generator.trained_component)
    if getattr(trained, "peft_config", None):
        trained.delete_adapters(list(trained.peft_config))


def _one_image_timer(pipe, work: Path, device: str, size: int, steps: int):
    """Best of two single-image `generate` calls of `dermaflux` holding `pipe`, after a warm-up."""
    make = plugins.get("generator", "dermaflux").cls
    context = RunContext(device=device, image_size=size, work_dir=work / "switches", profile="paper")
    generator = hand_over(make, pipe, work / "dermaflux-model", train="none", steps=steps, height=size, width=size,
                          batch_size=1)
    generator.fit([], context)
    todo = prompts(1)
    generator.generate(todo, context)
    return lambda: min(_timed(lambda: generator.generate(todo, context)) for _ in range(2))


def attention_kernels(pipe, work: Path, device: str, size: int, steps: int, label: str) -> list[Figure]:
    """FLUX s/image with SDPA's default kernel choice (flash attention on CUDA) vs its plain math kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    per_image = _one_image_timer(pipe, work, device, size, steps)
    default = per_image()
    with sdpa_kernel([SDPBackend.MATH]):
        math = per_image()
    return [Figure("gpu", f"{label} at {size}², SDPA's default kernels vs its math kernel (speed-up)", math / default,
                   "×", detail={"default_s": default, "math_s": math})]


def compiled_transformer(pipe, work: Path, device: str, size: int, steps: int, label: str) -> list[Figure]:
    """FLUX s/image with the transformer under `torch.compile` (the first call's compile time beside it)."""
    per_image = _one_image_timer(pipe, work, device, size, steps)
    eager = per_image()
    plain = pipe.transformer
    pipe.transformer = torch.compile(plain)
    try:
        start = time.perf_counter()
        first = per_image()  # the first of its two calls compiles
        with_compile = time.perf_counter() - start
        compiled = per_image()
    finally:
        pipe.transformer = plain
    return [Figure("gpu", f"{label} at {size}², torch.compile of the transformer (speed-up)", eager / compiled, "×",
                   detail={"eager_s": eager, "compiled_s": compiled, "compile_and_two_images_s": with_compile,
                           "best_of_first_two_s": first})]


def _phase(label: str, what: str, device: str, call, log) -> list[Figure]:
    """Run one measurement; its figures, or a 'failed' figure (with the traceback in the log) if it raised."""
    out: list[Figure] = []
    start = time.perf_counter()
    log(f"{label}: {what} ...")
    try:
        call(out)
        if device.startswith("cuda"):
            torch.cuda.synchronize()  # an asynchronous CUDA error is reported by the phase that caused it
    except Exception as exc:  # one phase's failure must not lose the others' figures
        log(f"{label}: {what} failed:\n{traceback.format_exc()}")
        out.append(Figure("gpu", f"{label}, {what}: failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})",
                          0.0, ""))
    log(f"{label}: {what} done in {time.perf_counter() - start:.0f} s")
    return out


def run(device: str = "cuda", small: bool = False, repeats: int = 2, deadline_s: float = 300.0,
        log=print) -> Iterator[list[Figure]]:
    """The figures of each phase in turn (a caller saves them as they come). FLUX.1-dev is built first and kept:
    its sampling, then SD 1.5's and SDXL's, then FLUX's attention kernels, LoRA fit and compiled transformer,
    the riskier phases last. `small`: the shrunk architectures at 64 px and 2 steps (the CPU test)."""
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    start = time.perf_counter()
    steps = 2 if small else None
    size = (lambda s: 64) if small else (lambda s: s)
    arch = shrunk if small else (lambda c: c)

    def built(label: str, build, configs) -> tuple[Any, list[Figure]]:
        t0 = time.perf_counter()
        held = _allocated(device)
        pipe = build(arch(configs))
        denoiser = getattr(pipe, "transformer", None) or pipe.unet
        return pipe, [Figure("gpu", f"{label}, random-init build on {device} ({parameters(denoiser) / 1e9:.2f} B "
                                    "parameters in the denoiser)", time.perf_counter() - t0, "s",
                             detail={"denoiser_parameters": parameters(denoiser), "gpu_bytes_before": held})]

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        flux, figures = built("FLUX.1-dev", lambda c: build_flux(c, device, dtype), FLUX_DEV)
        flux_steps = steps or 28
        sizes = (64,) if small else (512, 1024)
        yield figures + _phase("FLUX.1-dev", "sampling", device, lambda out: generation(
            "dermaflux", flux, work, device, sizes, flux_steps, 2 if small else 4, 1 if small else repeats,
            "FLUX.1-dev", out), log)
        resident = _allocated(device)  # FLUX stays on the GPU meanwhile: left out of SD's peaks
        for name, label, xl, configs, side, n in (("sd15", "SD 1.5", False, SD15, 512, 4),
                                                  ("sdxl", "SDXL", True, SDXL, 1024, 2)):
            if time.perf_counter() - start > deadline_s:
                log(f"{label}: skipped, past the {deadline_s:.0f} s deadline")
                continue
            pipe, figures = built(label, lambda c: build_sd(c, device, dtype, xl=xl), configs)
            yield figures + _phase(label, "sampling", device, lambda out, pipe=pipe: generation(
                name, pipe, work, device, (size(side),), steps or 25, 2 if small else n, 1 if small else repeats,
                label, out, baseline=resident), log)
            del pipe  # SD's weights leave the GPU before the next model; FLUX's stay for its later phases
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        yield _phase("FLUX.1-dev", "attention kernels", device, lambda out: out.extend(
            attention_kernels(flux, work, device, sizes[0], flux_steps, "FLUX.1-dev")), log)
        yield _phase("FLUX.1-dev", "LoRA fit", device, lambda out: lora_fit(
            "dermaflux", flux, work, device, flux_steps, 2 if small else 20, sizes[0], "FLUX.1-dev", out), log)
        if not small and time.perf_counter() - start < deadline_s:
            yield _phase("FLUX.1-dev", "torch.compile", device, lambda out: out.extend(
                compiled_transformer(flux, work, device, sizes[0], flux_steps, "FLUX.1-dev")), log)
