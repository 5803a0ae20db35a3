"""The offline EfficientNet-Lite0 extractor: shipped weights verified, features well-behaved."""

import numpy as np
import pytest
import torch
from PIL import Image

import dermabench
import dermabench_plugins.efficientnet_lite0 as lite0
from dermabench_plugins.efficientnet_lite0 import EfficientNetLite0


def _images(n, size=64, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    out = []
    for i in range(n):
        arr = np.kron(base, np.ones((size // 8, size // 8, 1), dtype=np.uint8))
        noise = rng.integers(-40, 40, arr.shape)
        out.append(Image.fromarray(np.clip(arr.astype(int) + noise + 7 * i, 0, 255).astype(np.uint8)))
    return out


def test_shipped_weights_classify_sklearn_flower_as_daisy():
    from sklearn.datasets import load_sample_image

    flower = Image.fromarray(load_sample_image("flower.jpg"))
    assert lite0.imagenet_top1(flower) == 985  # ImageNet "daisy"


def test_weight_mapping_is_complete_and_cached():
    source = torch.load(lite0.weights_path(), map_location="cpu", weights_only=True)
    assert len([k for k in source if not k.endswith("num_batches_tracked")]) == 247
    model = lite0.get_model()
    assert model is lite0.get_model()
    assert not model.training
    assert torch.equal(model.classifier.weight, source["_fc.weight"])
    assert torch.equal(model.conv_stem.weight, source["_conv_stem.weight"])


def test_shape_mismatch_is_a_clear_error(tmp_path):
    source = torch.load(lite0.weights_path(), map_location="cpu", weights_only=True)
    source["_fc.weight"] = torch.zeros(10, 1280)
    bad = tmp_path / "bad.pth"
    torch.save(source, bad)
    with pytest.raises(dermabench.PluginError, match="shape mismatch"):
        lite0.build_model(str(bad))


def test_features_shape_dtype_and_determinism():
    ex = EfficientNetLite0()
    images = _images(5)
    a = ex.extract(images, dermabench.RunContext())
    b = ex.extract(images, dermabench.RunContext())
    assert a.shape == (5, 1280) and a.dtype == np.float64
    assert np.isfinite(a).all() and a.std(axis=0).max() > 0
    np.testing.assert_array_equal(a, b)
    assert ex.extract([], dermabench.RunContext()).shape == (0, 1280)


def test_features_do_not_depend_on_batch_size():
    images = _images(7)
    full = EfficientNetLite0(batch_size=64).extract(images, dermabench.RunContext())
    for bs in (1, 3):
        part = EfficientNetLite0(batch_size=bs).extract(images, dermabench.RunContext())
        np.testing.assert_allclose(part, full, rtol=1e-5, atol=1e-5)


def test_options_coerced_from_cli_strings_and_described():
    ex = EfficientNetLite0(input_size="96", batch_size="8")
    assert (ex.input_size, ex.batch_size) == (96, 8)
    info = ex.describe()
    assert info["extractor"] == "efficientnet-lite0" and info["layer"] == "global_pool" and info["dim"] == 1280
    assert info["input_size"] == 96 and "bicubic" in info["resize"]
    assert EfficientNetLite0().input_size == lite0.DEFAULT_INPUT_SIZE
    for bad in ({"input_size": "big"}, {"batch_size": 0}, {"input_size": 16}, {"colour": 1}):
        with pytest.raises(dermabench.DermabenchError):
            EfficientNetLite0(**bad)


def test_registered_through_the_hook():
    registered = []
    lite0.register_extractors(registered.append)
    assert registered == [EfficientNetLite0]
    assert issubclass(EfficientNetLite0, dermabench.FeatureExtractor)
