"""FID: dermabench vs `torch_fidelity.calculate_metrics` on the same two folders, cold and with cached real statistics.

Both sides use the same network: torch-fidelity's own Inception-v3 (`inception-v3-compat`,
2048-d pool features) holding the same weights file, and compute FID and KID
(dermabench adds precision/recall on the same features, a k-NN costing well under
1 % of the time; torch-fidelity's own PRC would need VGG-16 weights, not at hand
offline). The FID Inception weights cannot be downloaded here, so the file is
torch-fidelity's architecture with random (Kaiming) weights; the cost of a
forward pass does not depend on the weights, and with the same file both tools
must give the same FID (checked: `fid_dermabench`, `fid_torch_fidelity`).

* cold: `dermabench fid A B` (`fid_between_folders`) vs `calculate_metrics(input1=A, input2=B)`.
* cached real: the real folder's features/statistics are already on disk. dermabench:
  the protocol's fidelity path, `fidelity_step.extract` with its `FeatureCache` (a hit
  for A) and the metrics; torch-fidelity: `cache=True` with `input1_cache_name`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from PIL import Image

from benchmarks.measure import Figure, ratio_figure, time_pair
from dermabench.api import RunContext, Sample
from dermabench.feature_cache import FeatureCache
from dermabench.fid_command import fid_between_folders, find_images, load_image, make_extractor
from dermabench.fidelity_step import extract
from dermabench.metrics.fidelity import fidelity_metrics


def random_inception_weights(path: Path) -> Path:
    """torch-fidelity's Inception-v3 with Kaiming-random convolutions, saved as a state dict."""
    from torch_fidelity import feature_extractor_inceptionv3 as tfi

    torch.manual_seed(0)
    with (
        mock.patch.object(tfi, "load_state_dict_from_url", lambda *a, **k: None),
        mock.patch.object(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None),
    ):
        model = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for module in model.modules():  # PyTorch's default init fades the signal to ~1e-8 over 90 layers
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.save(model.state_dict(), path)
    return path


def image_folders(root: Path, n: int, size: int) -> tuple[Path, Path]:
    """Two folders of `n` square PNGs each: phantom lesions (real) and augmented copies of others (judged)."""
    from dermabench_plugins.phantom import PhantomDataset

    samples = list(PhantomDataset(n=2 * n, size=size).samples())
    folders = root / "real", root / "synthetic"
    for folder, part in zip(folders, (samples[:n], samples[n : 2 * n])):
        folder.mkdir(parents=True)
        for i, sample in enumerate(part):
            image = sample.image.convert("RGB").resize((size, size), Image.BICUBIC)
            if folder.name == "synthetic":
                image = image.transpose(Image.Transpose.ROTATE_90)
            image.save(folder / f"{i:05d}.png")
    return folders


def run(n_images: int, repeats: int, image_size: int = 64) -> list[Figure]:
    import torch_fidelity

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        weights = random_inception_weights(root / "inception-random.pth")
        real, synthetic = image_folders(root, n_images, image_size)
        options = {"weights": str(weights)}
        tf_options = dict(
            fid=True, kid=True, kid_subset_size=min(1000, n_images), cuda=False, verbose=False,
            feature_extractor_weights_path=str(weights), save_cpu_ram=True,
        )
        found = {}

        def ours_cold():
            found["ours"] = fid_between_folders(real, synthetic, "inception", options, image_size, "cpu")

        def direct_cold():
            found["direct"] = torch_fidelity.calculate_metrics(input1=str(real), input2=str(synthetic), **tf_options)

        cold = time_pair(ours_cold, direct_cold, repeats)

        extractor = make_extractor("inception", options)
        context = RunContext(device="cpu", image_size=image_size)
        cache = FeatureCache(root / "feature-cache")

        def samples(folder: Path) -> list[Sample]:
            return [Sample(load_image(p, image_size), 0) for p in find_images(folder, str(folder))]

        def ours_cached():
            real_features = extract(extractor, samples(real), context, "real", cache)  # a cache hit after warm-up
            synthetic_features = extract(extractor, samples(synthetic), context, "synthetic")
            return fidelity_metrics(real_features, synthetic_features)

        def direct_cached():
            return torch_fidelity.calculate_metrics(
                input1=str(real), input2=str(synthetic), cache=True, cache_root=str(root / "tf-cache"),
                input1_cache_name="real", **tf_options,
            )

        cached = time_pair(ours_cached, direct_cached, repeats)
    fids = {"fid_dermabench": found["ours"]["fid"], "fid_torch_fidelity": found["direct"]["frechet_inception_distance"]}
    agree = bool(np.isclose(fids["fid_dermabench"], fids["fid_torch_fidelity"], rtol=1e-3))
    label = f"{n_images} + {n_images} images, {image_size} px → Inception 299 px"
    return [
        ratio_figure("overhead", f"FID+KID, cold ({label})", *cold, **fids, fids_agree=agree),
        ratio_figure("overhead", f"FID+KID, cached real statistics ({label})", *cached),
    ]
