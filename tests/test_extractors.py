"""The `inception`, `dinov2` and `swav` extractors, on random-init weights saved the way real ones are.

No network and no real weights: each test builds the network from its definition
with random weights, saves them in the released file format, loads them through the
plugin, and checks the features against a direct call of the reference library.
"""

import urllib.error
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

import dermabench
from dermabench import plugins
from dermabench_plugins import dinov2, inception, swav


def _images(n, size=64, seed=0):
    """Distinct images (colour, stripe direction and frequency vary), so that features differ between them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size][..., None] / size
    images = []
    for _ in range(n):
        base, amplitude, frequency = rng.uniform(0, 255, 3), rng.uniform(-120, 120, 3), rng.uniform(1, 6)
        stripes = np.sin(2 * np.pi * frequency * (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)))
        array = base + amplitude * stripes + rng.normal(0, 10, (size, size, 3))
        images.append(Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)))
    return images


def _imagenet_batch(images, size):
    """Independent preprocessing: PIL bicubic to size, ImageNet mean/std, N×3×S×S float32."""
    arr = np.stack([np.asarray(im.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) for im in images])
    arr = (arr / 255.0 - np.array([0.485, 0.456, 0.406], dtype=np.float32)) / np.array(
        [0.229, 0.224, 0.225], np.float32
    )
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float()


def _close(actual, desired):
    """Equal up to float32 rounding, which a deep random-init network amplifies: tolerance relative to the scale."""
    np.testing.assert_allclose(actual, desired, rtol=1e-5, atol=1e-5 * np.abs(desired).max())


class _NotATensor:
    """Anything a weights_only load must refuse."""


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """torch hub's folder, empty: no cached weights."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub"


# -- inception ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """torch-fidelity's FeatureExtractorInceptionV3 built without weights, random BN statistics, saved as a .pth."""
    from benchmarks.fid_overhead import random_inception_weights

    return random_inception_weights(tmp_path_factory.mktemp("inception") / inception.WEIGHTS_FILE)


def test_inception_matches_torch_fidelity_on_the_same_weights(inception_weights):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    images = _images(2)
    ours = inception.InceptionV3(weights=str(inception_weights)).extract(images, dermabench.RunContext())
    reference_model = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(inception_weights)
    )
    x = torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        reference = reference_model(x)[0].double().numpy()
    assert ours.shape == (2, 2048) and ours.dtype == np.float64
    assert np.abs(ours[0] - ours[1]).mean() > 0.05 * np.abs(ours).mean()  # the images are told apart
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-7)

    # another batch size, and an image of another size in between (the network resizes per stacked group)
    small = _images(1, size=48, seed=5)[0]
    mixed = inception.InceptionV3(weights=str(inception_weights), batch_size="2").extract([images[0], small, images[1]])
    _close(mixed[[0, 2]], ours)
    assert np.abs(mixed[1] - mixed[0]).mean() > 0.05 * np.abs(ours).mean()


def test_inception_finds_torch_fidelitys_cached_download(inception_weights, empty_hub):
    cached = empty_hub / "checkpoints" / inception.WEIGHTS_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(inception_weights.read_bytes())
    extractor = inception.InceptionV3()
    assert extractor.weights == cached
    info = extractor.describe()
    assert info["extractor"] == "inception" and info["dim"] == 2048 and info["input_size"] == 299
    assert "pool3" in info["layer"] and "bilinear" in info["resize"]
    assert len(info["weights_sha256"]) == 64


def test_inception_offline_without_weights_fails_at_once_naming_file_and_option(empty_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(inception, "download_weights", mock.Mock(side_effect=AssertionError("no download offline")))
    with pytest.raises(dermabench.PluginError) as caught:
        inception.InceptionV3()
    message = str(caught.value)
    assert str(empty_hub / "checkpoints" / inception.WEIGHTS_FILE) in message
    assert "--extractor-opt weights=PATH" in message


def test_inception_failed_download_is_tried_once_and_leaves_nothing(empty_hub, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    urlopen = mock.Mock(side_effect=urllib.error.URLError("Name or service not known"))
    monkeypatch.setattr(inception.urllib.request, "urlopen", urlopen)
    with pytest.raises(dermabench.PluginError, match="download failed: Name or service not known"):
        inception.InceptionV3()
    assert urlopen.call_count == 1
    assert list((empty_hub / "checkpoints").iterdir()) == []


def test_inception_weight_file_errors(inception_weights, tmp_path):
    with pytest.raises(dermabench.PluginError, match="weights file not found: .*nope.pth"):
        inception.InceptionV3(weights=str(tmp_path / "nope.pth"))

    code = tmp_path / "code.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": _NotATensor()}, code)
    with pytest.raises(dermabench.PluginError, match="weights_only=True"):
        inception.InceptionV3(weights=str(code)).extract(_images(1))

    state = torch.load(inception_weights, weights_only=True)
    del state["fc.bias"]
    partial = tmp_path / "partial.pth"
    torch.save(state, partial)
    with pytest.raises(dermabench.PluginError, match="do not fit torch-fidelity's Inception-v3.*fc.bias"):
        inception.InceptionV3(weights=str(partial)).extract(_images(1))


# -- dinov2 ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=56, patch_size=14
    )
    folder = tmp_path_factory.mktemp("dinov2") / "tiny-dinov2"
    Dinov2Model(config).save_pretrained(folder)
    return folder


def test_dinov2_cls_and_mean_features_match_transformers(tiny_dinov2):
    from transformers import Dinov2Model

    images = _images(4)
    reference_model = Dinov2Model.from_pretrained(tiny_dinov2, local_files_only=True).eval()
    with torch.no_grad():
        out = reference_model(pixel_values=_imagenet_batch(images, 56))
    cls = dinov2.DINOv2(model=str(tiny_dinov2), input_size="56").extract(images, dermabench.RunContext())
    assert cls.shape == (4, 32) and cls.dtype == np.float64
    np.testing.assert_allclose(cls, out.pooler_output.double().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cls, out.last_hidden_state[:, 0].double().numpy(), rtol=1e-5, atol=1e-6)
    mean = dinov2.DINOv2(model=str(tiny_dinov2), input_size=56, pool="mean").extract(images)
    np.testing.assert_allclose(mean, out.last_hidden_state[:, 1:].mean(1).double().numpy(), rtol=1e-5, atol=1e-6)
    one_by_one = dinov2.DINOv2(model=str(tiny_dinov2), input_size=56, batch_size=1).extract(images)
    np.testing.assert_allclose(one_by_one, cls, rtol=1e-5, atol=1e-6)


def test_dinov2_describe_pins_the_weights(tiny_dinov2):
    info = dinov2.DINOv2(model=str(tiny_dinov2)).describe()
    assert info["extractor"] == "dinov2" and info["model"] == str(tiny_dinov2.resolve())
    assert info["dim"] == 32 and info["input_size"] == 224 and "CLS" in info["layer"]
    assert info["weights"].startswith("sha256:") and info["normalization"]["mean"] == [0.485, 0.456, 0.406]
    assert dinov2.DINOv2.OPTIONS["model"].default == "facebook/dinov2-base"


def test_dinov2_missing_model_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(dermabench.PluginError, match="'nobody/no-such-dinov2'.*--extractor-opt model=PATH"):
        dinov2.DINOv2(model="nobody/no-such-dinov2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(dermabench.PluginError, match="has no config.json"):
        dinov2.DINOv2(model=str(tmp_path / "empty"))
    with pytest.raises(dermabench.PluginError, match="folder not found"):
        dinov2.DINOv2(model=str(tmp_path / "missing" / "folder"))
    with pytest.raises(dermabench.DermabenchError, match="pool"):
        dinov2.DINOv2(model=str(tmp_path / "empty"), pool="max")


# -- swav --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def swav_trunk():
    """A random-init torchvision resnet50 trunk, BN statistics randomised."""
    from torchvision.models import resnet50

    torch.manual_seed(0)
    state = resnet50(weights=None).state_dict()
    for key, value in state.items():
        if key.endswith("running_mean"):
            value.normal_(0, 0.1)
        elif key.endswith("running_var"):
            value.uniform_(0.5, 1.5)
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


@pytest.fixture(scope="module")
def swav_checkpoint(swav_trunk, tmp_path_factory):
    """Saved like swav_800ep_pretrain.pth.tar: flat, `module.` prefixes, projection head and prototypes."""
    state = {f"module.{k}": v for k, v in swav_trunk.items()}
    state["module.projection_head.0.weight"] = torch.randn(2048, 2048)
    state["module.projection_head.3.weight"] = torch.randn(128, 2048)
    state["module.prototypes.weight"] = torch.randn(3000, 128)
    path = tmp_path_factory.mktemp("swav") / swav.WEIGHTS_FILE
    torch.save(state, path)
    return path


def test_swav_features_match_torchvision_resnet50_with_the_trunk(swav_trunk, swav_checkpoint):
    from torchvision.models import resnet50

    images = _images(3)
    reference_model = resnet50(weights=None)
    reference_model.fc = torch.nn.Identity()
    missing, unexpected = reference_model.load_state_dict(swav_trunk, strict=False)
    assert not missing and not unexpected
    with torch.no_grad():
        reference = reference_model.eval()(_imagenet_batch(images, 64)).double().numpy()
    ours = swav.SwAVResNet50(weights=str(swav_checkpoint), input_size=64).extract(images, dermabench.RunContext())
    assert ours.shape == (3, 2048) and ours.dtype == np.float64
    assert np.abs(ours[0] - ours[1]).mean() > 0.05 * np.abs(ours).mean()
    _close(ours, reference)
    one_by_one = swav.SwAVResNet50(weights=str(swav_checkpoint), input_size=64, batch_size=1).extract(images)
    _close(one_by_one, ours)


def test_swav_training_checkpoint_layout_loads_the_same_trunk(swav_trunk, tmp_path):
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 800, "state_dict": {f"module.{k}": v for k, v in swav_trunk.items()}}, path)
    model = swav.build_model(path)
    assert torch.equal(model.layer4[2].conv3.weight, swav_trunk["layer4.2.conv3.weight"])
    assert isinstance(model.fc, torch.nn.Identity)


def test_swav_errors(swav_trunk, empty_hub, tmp_path):
    with pytest.raises(dermabench.PluginError, match=r"--extractor-opt weights=PATH .*swav_800ep_pretrain\.pth\.tar"):
        swav.SwAVResNet50()
    broken = dict(swav_trunk)
    del broken["layer1.0.conv1.weight"]
    broken["head.weight"] = torch.zeros(2)
    path = tmp_path / "broken.pth.tar"
    torch.save(broken, path)
    expected = "1 missing trunk tensors, e.g. layer1.0.conv1.weight; 1 unexpected entries, e.g. head.weight"
    with pytest.raises(dermabench.PluginError, match=expected):
        swav.build_model(path)
    describe = swav.SwAVResNet50(weights=str(path)).describe()
    assert describe["extractor"] == "swav" and describe["layer"] == "avgpool" and describe["dim"] == 2048


# -- registration ------------------------------------------------------------------------------------------------


def test_all_extractors_register_through_entry_points():
    found = plugins.registered("extractor")
    expected = {
        "inception": inception.InceptionV3,
        "dinov2": dinov2.DINOv2,
        "swav": swav.SwAVResNet50,
    }
    for name, cls in expected.items():
        assert found[name].cls is cls and found[name].plugin == name
        assert issubclass(cls, dermabench.FeatureExtractor)
